"""Base64 share links: the body v2rayNG, Streisand, Shadowrocket, NekoBox and Hiddify import.

``base64("\\n".join(vless links))``, the format Marzban and 3x-ui serve and the one every client
understands, so it is also what an unknown client gets. Links are :func:`atlas.vpn.links.share_link`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Final

from atlas.vpn.endpoint import Endpoint
from atlas.vpn.links import share_link

CONTENT_TYPE: Final = "text/plain; charset=utf-8"


def render_share_links(endpoints: Sequence[Endpoint]) -> bytes:
    """The base64 body (standard alphabet, padded) of one link per endpoint."""
    return base64.b64encode("\n".join(share_link(endpoint) for endpoint in endpoints).encode("utf-8"))
