"""Xray JSON: a list of complete Xray client configs, one per server, for v2rayN and Happ.

v2rayN (6.40 and later) and Happ import a JSON array whose elements are whole Xray configs, each
named by its ``remarks``; the user picks one like a server. Each config has a SOCKS inbound on
127.0.0.1:10808 and an HTTP one on 10809 (v2rayN's defaults; the apps rewrite the ports and add
their own TUN), one ``vless`` outbound tagged ``proxy`` with its ``streamSettings`` (``tcp``/``ws``,
``tls``/``reality``), ``direct`` and ``block``. Routing keeps private networks direct.

The tests load such a config into Debian's V2Ray 4.34 as the client and carry traffic through it;
V2Ray ignores the Xray-only fields (``fingerprint``, ``realitySettings``) it does not know.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from atlas.vpn.endpoint import Endpoint

CONTENT_TYPE: Final = "application/json; charset=utf-8"
SOCKS_PORT: Final = 10808
HTTP_PORT: Final = 10809
_PRIVATE_NETS: Final = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "fc00::/7")


def xray_stream_settings(endpoint: Endpoint) -> dict[str, Any]:
    """The outbound's ``streamSettings``: transport and security."""
    stream: dict[str, Any] = {"network": endpoint.transport, "security": endpoint.security}
    if endpoint.security == "tls":
        stream["tlsSettings"] = {
            "serverName": endpoint.server_name,
            "fingerprint": endpoint.fp,
            "allowInsecure": False,
        }
    elif endpoint.security == "reality":
        stream["realitySettings"] = {
            "serverName": endpoint.sni,
            "fingerprint": endpoint.fp,
            "publicKey": endpoint.pbk,
            "shortId": endpoint.sid,
            "spiderX": "",
        }
    if endpoint.transport == "ws":
        ws: dict[str, Any] = {"path": endpoint.path}
        if endpoint.host_header:
            ws["headers"] = {"Host": endpoint.host_header}
        stream["wsSettings"] = ws
    return stream


def xray_config(endpoint: Endpoint) -> dict[str, Any]:
    """The complete client config of one endpoint, named by ``remarks``."""
    user: dict[str, Any] = {"id": endpoint.uuid, "encryption": "none", "level": 0}
    if endpoint.effective_flow:
        user["flow"] = endpoint.effective_flow
    sniffing = {"enabled": True, "destOverride": ["http", "tls"], "routeOnly": True}
    return {
        "remarks": endpoint.label,
        "log": {"loglevel": "warning"},
        "dns": {"servers": ["1.1.1.1", "8.8.8.8"]},
        "inbounds": [
            {
                "tag": "socks",
                "listen": "127.0.0.1",
                "port": SOCKS_PORT,
                "protocol": "socks",
                "settings": {"auth": "noauth", "udp": True},
                "sniffing": sniffing,
            },
            {
                "tag": "http",
                "listen": "127.0.0.1",
                "port": HTTP_PORT,
                "protocol": "http",
                "settings": {},
                "sniffing": sniffing,
            },
        ],
        "outbounds": [
            {
                "tag": "proxy",
                "protocol": "vless",
                "settings": {"vnext": [{"address": endpoint.host, "port": endpoint.port, "users": [user]}]},
                "streamSettings": xray_stream_settings(endpoint),
            },
            {"tag": "direct", "protocol": "freedom", "settings": {}},
            {"tag": "block", "protocol": "blackhole", "settings": {}},
        ],
        "routing": {
            "domainStrategy": "AsIs",
            "rules": [{"type": "field", "ip": list(_PRIVATE_NETS), "outboundTag": "direct"}],
        },
    }


def render_xray(endpoints: Sequence[Endpoint]) -> bytes:
    """The JSON array of configs, as UTF-8 bytes."""
    configs = [xray_config(endpoint) for endpoint in endpoints]
    return (json.dumps(configs, ensure_ascii=False, indent=2) + "\n").encode()
