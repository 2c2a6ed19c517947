"""Subscription formats, one module each, and the table that picks one per client.

- :mod:`.choice`: :class:`Format`, the User-Agent table :data:`CLIENT_RULES`, :func:`choose_format`.
- :mod:`.share_links`: base64 ``vless://`` links (v2rayNG, Streisand, Shadowrocket, NekoBox, unknown).
- :mod:`.clash`: Clash/Mihomo YAML (Clash Verge Rev, FlClash, Stash, Mihomo, Clash Meta).
- :mod:`.singbox`: sing-box JSON (SFA, SFI, SFM, SFT, Karing, Hiddify).
- :mod:`.xray_json`: a list of Xray JSON configs (v2rayN, Happ).

Every renderer takes the same input, a sequence of :class:`~atlas.vpn.endpoint.Endpoint` (servers
or placeholders), so a subscription's state (active, expired, banned) is decided once, above the
formats, and reaches every client the same way. The HTML page for browsers is the web layer's
(:mod:`atlas.web.subscription_page`); :func:`render_profile` refuses :attr:`Format.HTML`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from atlas.vpn.endpoint import Endpoint, unique_labels
from atlas.vpn.formats import clash, share_links, singbox, xray_json
from atlas.vpn.formats.choice import CLIENT_RULES as CLIENT_RULES
from atlas.vpn.formats.choice import ClientRule as ClientRule
from atlas.vpn.formats.choice import Format as Format
from atlas.vpn.formats.choice import choose_format as choose_format
from atlas.vpn.formats.choice import client_rule as client_rule
from atlas.vpn.formats.choice import wants_html as wants_html

_RESERVED_TAGS = frozenset({clash.AUTO_GROUP, singbox.AUTO_TAG, "direct", "DIRECT", "REJECT"})


def render_profile(fmt: Format, endpoints: Sequence[Endpoint], *, title: str) -> tuple[bytes, str]:
    """``(body, content_type)`` of ``endpoints`` in ``fmt``; ``title`` names the selector group.

    Labels are made unique first, and kept apart from the group names the profiles use
    themselves (a server labelled ``direct`` would otherwise shadow sing-box's direct outbound).
    """
    group = title if title not in _RESERVED_TAGS else f"{title} VPN"
    entries = unique_labels(_keep_apart(endpoint, group) for endpoint in endpoints)
    if fmt is Format.BASE64:
        return share_links.render_share_links(entries), share_links.CONTENT_TYPE
    if fmt is Format.CLASH:
        return clash.render_clash(entries, group=group), clash.CONTENT_TYPE
    if fmt is Format.SINGBOX:
        return singbox.render_singbox(entries, group=group), singbox.CONTENT_TYPE
    if fmt is Format.XRAY:
        return xray_json.render_xray(entries), xray_json.CONTENT_TYPE
    raise ValueError(f"render_profile renders client formats, not {fmt.value!r}")


def _keep_apart(endpoint: Endpoint, group: str) -> Endpoint:
    if endpoint.label in _RESERVED_TAGS or endpoint.label == group:
        return replace(endpoint, label=f"{endpoint.label} ·")
    return endpoint
