"""Clash/Mihomo YAML: the profile Clash Verge Rev, FlClash, Stash, Mihomo and Clash Meta import.

One ``proxies`` entry per :class:`~atlas.vpn.endpoint.Endpoint`, with the fields Mihomo's VLESS
documentation lists (``name``, ``type: vless``, ``server``, ``port``, ``uuid``, ``udp``, ``flow``,
``network``, ``tls``, ``servername``, ``client-fingerprint``, ``skip-cert-verify``,
``reality-opts: {public-key, short-id}``, ``ws-opts: {path, headers: {Host}}``); ``flow`` is always
written, empty when the node has none, so every entry has the same shape. Then two groups: a
``select`` named after the profile (what the user picks from) that offers ``⚡ Auto`` first, and the
``url-test`` ``⚡ Auto`` that picks the fastest server. Every connection goes to the selector
(``MATCH``), except private networks, which stay direct so the user's LAN and router keep working.

A profile of placeholders only (expired, banned) has no ``⚡ Auto``: there is nothing to test, and
the placeholders' names are then the first thing the user sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from atlas.vpn.endpoint import Endpoint
from atlas.vpn.formats import yaml_text

AUTO_GROUP: Final = "⚡ Auto"
TEST_URL: Final = "https://www.gstatic.com/generate_204"
CONTENT_TYPE: Final = "text/yaml; charset=utf-8"
_PRIVATE_NETS: Final = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "fc00::/7")


def clash_proxy(endpoint: Endpoint) -> dict[str, Any]:
    """The ``proxies`` entry of one endpoint."""
    proxy: dict[str, Any] = {
        "name": endpoint.label,
        "type": "vless",
        "server": endpoint.host,
        "port": endpoint.port,
        "uuid": endpoint.uuid,
        "udp": True,
        "flow": endpoint.effective_flow,
        "network": endpoint.transport,
        "tls": endpoint.tls,
    }
    if endpoint.tls:
        proxy["servername"] = endpoint.server_name
        proxy["client-fingerprint"] = endpoint.fp
        proxy["skip-cert-verify"] = False
    if endpoint.security == "reality":
        proxy["reality-opts"] = {"public-key": endpoint.pbk, "short-id": endpoint.sid}
    if endpoint.transport == "ws":
        ws: dict[str, Any] = {"path": endpoint.path}
        if endpoint.host_header:
            ws["headers"] = {"Host": endpoint.host_header}
        proxy["ws-opts"] = ws
    return proxy


def clash_config(endpoints: Sequence[Endpoint], *, group: str) -> dict[str, Any]:
    """The whole profile as plain data; ``group`` names the selector (the profile title).

    ``endpoints`` must have unique labels (:func:`~atlas.vpn.endpoint.unique_labels`).
    """
    group = group.replace(",", " ")  # a comma would end the name inside the "MATCH,<group>" rule
    names = [endpoint.label for endpoint in endpoints]
    live = [endpoint.label for endpoint in endpoints if not endpoint.placeholder]
    groups: list[dict[str, Any]] = [
        {"name": group, "type": "select", "proxies": ([AUTO_GROUP] if live else []) + names}
    ]
    if live:
        groups.append(
            {"name": AUTO_GROUP, "type": "url-test", "proxies": live, "url": TEST_URL, "interval": 300}
        )
    rules = [f"IP-CIDR{'6' if ':' in net else ''},{net},DIRECT,no-resolve" for net in _PRIVATE_NETS]
    return {
        "mixed-port": 7890,
        "allow-lan": False,
        "mode": "rule",
        "log-level": "warning",
        "ipv6": True,
        "proxies": [clash_proxy(endpoint) for endpoint in endpoints],
        "proxy-groups": groups,
        "rules": [*rules, f"MATCH,{group}"],
    }


def render_clash(endpoints: Sequence[Endpoint], *, group: str) -> bytes:
    """The profile as YAML bytes (UTF-8)."""
    return yaml_text.dump(clash_config(endpoints, group=group)).encode("utf-8")
