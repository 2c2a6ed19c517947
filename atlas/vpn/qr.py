"""QR codes for share links and subscription URLs (PNG, sent as a Telegram photo).

Built with ``segno`` (pure Python, no Pillow). Error correction level M is the usual choice for
codes shown on a phone screen and scanned by another phone: it survives glare and moiré, and a
typical VLESS REALITY link (~250 characters) still fits in a version that scans easily.
"""

from __future__ import annotations

import io
from typing import Final

import segno

MAX_SCALE: Final = 64


def qr_png(text: str, *, scale: int = 8, border: int = 4) -> bytes:
    """Return a black-on-white PNG of ``text`` as a QR code; each module is ``scale`` pixels.

    ``border`` is the quiet zone in modules (the standard asks for 4). Raises ``ValueError`` for
    empty text, a scale outside 1..64, or text too long for any QR version.
    """
    if not text:
        raise ValueError("qr_png needs non-empty text")
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be an integer in 1..{MAX_SCALE}, got {scale!r}")
    if isinstance(border, bool) or not isinstance(border, int) or not 0 <= border <= 16:
        raise ValueError(f"border must be an integer in 0..16, got {border!r}")
    try:
        code = segno.make_qr(text, error="m", boost_error=False)
    except segno.DataOverflowError as exc:
        raise ValueError(f"text of {len(text)} characters is too long for a QR code") from exc
    out = io.BytesIO()
    code.save(out, kind="png", scale=scale, border=border)
    return out.getvalue()
