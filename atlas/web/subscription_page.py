"""The page a browser gets at ``/sub/<token>``: status, expiry, traffic, QR code, one-tap import.

Server-rendered HTML in the user's language (``sub_url.page.*`` in the locale files), no front-end
build, no external resources: the QR code is an inline PNG (``data:``), the styles are inline, and
the one script (copy the link; it also marks the page ``data-js="on"`` so the copy button only
appears where it works) is allowed by its hash in the Content-Security-Policy, which forbids
everything else. The token is in the URL, so the page sends no referrer to the links it offers.

Import buttons are the apps' own deep links (:func:`import_links`); each points at the URL with the
format forced where an app's User-Agent might not be recognised (Clash, sing-box), so a tap always
imports what that app reads.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from html import escape
from typing import Final
from urllib.parse import quote

from atlas.telegram.i18n import Translator
from atlas.vpn.qr import qr_png
from atlas.web.subscription_view import AccessState, SubscriptionView, format_date

_SCRIPT: Final = (
    "document.documentElement.dataset.js='on';"
    "const b=document.getElementById('copy'),u=document.getElementById('url');"
    "b.addEventListener('click',()=>{const done=()=>{b.textContent=b.dataset.done;};"
    # The Clipboard API exists only in secure contexts (https); plain http falls back to a selection.
    "if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(u.value).then(done);}"
    "else{u.select();document.execCommand('copy');done();}});"
)
_SCRIPT_HASH: Final = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{_SCRIPT_HASH}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS: Final = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "referrer-policy": "no-referrer",
    "x-robots-tag": "noindex, nofollow",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}

_STYLE: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f3f4f6;color:#111}
main{max-width:34rem;margin:0 auto;padding:1rem}
section{background:#fff;border-radius:12px;padding:1rem;margin:0 0 1rem}
h1{font-size:1.3rem;margin:.5rem 0 1rem}h2{font-size:1.05rem;margin:0 0 .6rem}
.status{display:inline-block;padding:.15rem .6rem;border-radius:999px;font-weight:600}
.active{background:#dcfce7;color:#166534}.expired,.banned{background:#fee2e2;color:#991b1b}
.pending{background:#fef9c3;color:#854d0e}
dl{display:grid;grid-template-columns:auto 1fr;gap:.3rem 1rem;margin:.8rem 0 0}dt{color:#555}dd{margin:0}
.apps{display:grid;grid-template-columns:repeat(auto-fill,minmax(9rem,1fr));gap:.5rem}
.apps a,.button{display:block;text-align:center;padding:.7rem;border-radius:10px;background:#2563eb;
color:#fff;text-decoration:none;font-weight:600;border:0;font-size:1rem}
input{width:100%;box-sizing:border-box;padding:.5rem;font-family:monospace;margin:.3rem 0 .6rem}
#copy{display:none;width:100%}html[data-js=on] #copy{display:block}
.qr{text-align:center}.qr img{width:14rem;height:14rem;image-rendering:pixelated}
ul{margin:0;padding-left:1.2rem}.note{color:#555}
"""


@dataclass(frozen=True, slots=True)
class ImportLink:
    """One import button: the app's name and its deep link."""

    app: str
    href: str


def import_links(subscription_url: str, title: str) -> tuple[ImportLink, ...]:
    """The deep links that make each app import ``subscription_url`` (as the apps document them)."""
    url = quote(subscription_url, safe="")
    clash = quote(subscription_url + "/clash", safe="")
    singbox = quote(subscription_url + "/singbox", safe="")
    name = quote(title, safe="")
    return (
        ImportLink("v2rayNG", f"v2rayng://install-config?url={url}#{name}"),
        ImportLink("Hiddify", f"hiddify://import/{subscription_url}#{name}"),
        ImportLink("sing-box", f"sing-box://import-remote-profile?url={singbox}#{name}"),
        ImportLink("Clash / Mihomo", f"clash://install-config?url={clash}&name={name}"),
        ImportLink("Stash", f"stash://install-config?url={clash}"),
        ImportLink("Happ", f"happ://add/{subscription_url}"),
    )


def format_bytes(count: int) -> str:
    """``count`` bytes for people: ``0 B``, ``1.5 GB`` (decimal units, as the apps show them)."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _attr(text: str) -> str:
    return escape(text, quote=True)


def render_page(
    view: SubscriptionView,
    *,
    texts: Translator,
    title: str,
    subscription_url: str,
    days_left: int,
    bot_url: str | None,
    support_url: str | None,
) -> str:
    """The whole HTML document. ``days_left``: whole days until expiry (0 once past)."""
    lang = view.language

    def t(key: str, **params: object) -> str:
        return texts.t(lang, f"sub_url.page.{key}", **params)

    state = view.state
    dates = (
        f"<dt>{t('valid_until')}</dt><dd>{format_date(view.expires_at, lang)}"
        f" · {t('days_left', days=days_left)}</dd>"
        if state in {AccessState.ACTIVE, AccessState.PENDING}
        else f"<dt>{t('expired_on')}</dt><dd>{format_date(view.expires_at, lang)}</dd>"
    )
    used = format_bytes(view.userinfo.upload + view.userinfo.download)
    traffic = (
        t("traffic_unlimited", used=used)
        if view.userinfo.total == 0
        else t("traffic_limited", used=used, limit=format_bytes(view.userinfo.total))
    )
    servers = "".join(f"<li>{_attr(endpoint.label)}</li>" for endpoint in view.servers)
    qr = base64.b64encode(qr_png(subscription_url, scale=6, border=2)).decode()
    apps = "".join(
        f'<a href="{_attr(link.href)}" data-app="{_attr(link.app)}">{_attr(link.app)}</a>'
        for link in import_links(subscription_url, title)
    )
    note = {
        AccessState.EXPIRED: "note_expired",
        AccessState.BANNED: "note_banned",
        AccessState.PENDING: "note_pending",
    }.get(state)
    footer = []
    if bot_url and state is not AccessState.BANNED:
        footer.append(f'<a class="button" id="renew" href="{_attr(bot_url)}">{t("renew")}</a>')
    if support_url:
        footer.append(f'<p><a id="support" href="{_attr(support_url)}">{t("support")}</a></p>')
    return f"""<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="robots" content="noindex, nofollow">
<title>{_attr(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>{t("heading", title=title)}</h1>
<section id="state">
<span class="status {state.value}" id="status">{t("status_" + state.value)}</span>
{f'<p class="note" id="note">{t(note)}</p>' if note else ""}
<dl>{dates}<dt>{t("traffic")}</dt><dd id="traffic">{traffic}</dd></dl>
</section>
{f'<section id="servers"><h2>{t("servers")}</h2><ul>{servers}</ul></section>' if servers else ""}
<section id="import">
<h2>{t("add_to_app")}</h2>
<p class="note">{t("add_hint")}</p>
<div class="apps">{apps}</div>
</section>
<section id="link">
<h2>{t("link")}</h2>
<input id="url" readonly value="{_attr(subscription_url)}">
<button class="button" id="copy" type="button" data-done="{_attr(t("copied"))}">{t("copy")}</button>
<div class="qr"><img id="qr" alt="QR" src="data:image/png;base64,{qr}"></div>
<p class="note">{t("scan")}</p>
</section>
{"".join(footer)}
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""
