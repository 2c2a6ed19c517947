"""The web chat's pure parts: bot HTML as safe nodes, and the bounded store of uploaded bytes.

The node tree is the page's only input from the bot's text, so its properties are the page's
safety: only the tags the page has an element for, only http(s) links, and exactly the text
Telegram would show (the same plain text the emulator computes when it accepts the message).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from atlas.testing.botapi._files import FileStore, content_type_of
from atlas.testing.botapi._telegram_html import ALLOWED_TAGS, Node, linkify, plain, to_nodes
from atlas.testing.botapi._validate import plain_text
from atlas.testing.botapi.errors import ApiError


def test_formatting_tags_become_nodes_with_their_aliases_folded() -> None:
    nodes = to_nodes("<b>bold <i>both</i></b><strong>s</strong><em>e</em><del>d</del><ins>n</ins>", "HTML")
    assert nodes == [
        {"t": "b", "c": ["bold ", {"t": "i", "c": ["both"]}]},
        {"t": "b", "c": ["s"]}, {"t": "i", "c": ["e"]}, {"t": "s", "c": ["d"]}, {"t": "u", "c": ["n"]},
    ]


def test_entities_are_decoded_into_text_and_never_become_markup() -> None:
    nodes = to_nodes("&lt;script&gt;alert(1)&lt;/script&gt; &amp; a & b", "HTML")
    assert nodes == ["<script>alert(1)</script> & a & b"]


def test_only_http_links_keep_their_href() -> None:
    nodes = to_nodes(
        '<a href="javascript:alert(1)">x</a> <a href="tg://user?id=5">mention</a> '
        "<a href='https://example.org/?a=1&amp;b=2'>ok</a>",
        "HTML",
    )
    link = {"t": "a", "href": "https://example.org/?a=1&b=2", "c": ["ok"]}
    assert nodes == ["x", " ", "mention", " ", link]


def test_spoilers_code_blocks_quotes_and_custom_emoji() -> None:
    nodes = to_nodes(
        '<span class="tg-spoiler">a</span><tg-spoiler>b</tg-spoiler>'
        '<pre><code class="language-py">x = 1</code></pre><blockquote expandable>q</blockquote>'
        '<tg-emoji emoji-id="5368324170671202286">👍</tg-emoji>',
        "HTML",
    )
    assert nodes == [
        {"t": "tg-spoiler", "c": ["a"]}, {"t": "tg-spoiler", "c": ["b"]},
        {"t": "pre", "c": [{"t": "code", "c": ["x = 1"]}]}, {"t": "blockquote", "c": ["q"]}, "👍",
    ]


def test_bare_urls_become_links_also_in_code_but_not_inside_a_link() -> None:
    url = "http://127.0.0.1:8080/sub/AbC-123"
    text = f'Your link: <code>{url}</code>. See https://example.org/help. <a href="{url}">{url}</a>'
    nodes = to_nodes(text, "HTML")
    assert nodes == [
        "Your link: ", {"t": "code", "c": [{"t": "a", "href": url, "c": [url]}]}, ". See ",
        {"t": "a", "href": "https://example.org/help", "c": ["https://example.org/help"]}, ". ",
        {"t": "a", "href": url, "c": [url]},
    ]


def test_text_without_html_is_shown_as_sent_with_links() -> None:
    assert to_nodes("<b>not markup</b> http://x.org", None) == [
        "<b>not markup</b> ", {"t": "a", "href": "http://x.org", "c": ["http://x.org"]},
    ]
    assert linkify("https://") == ["https://"]


def test_html_the_parser_cannot_read_is_shown_as_one_string() -> None:
    assert to_nodes("<b>open", "HTML") == ["<b>open"]
    assert to_nodes("<script>x</script>", "HTML") == ["<script>x</script>"]


_FRAGMENTS = st.sampled_from([
    "<b>", "</b>", "<i>", "</i>", "<code>", "</code>", "<pre>", "</pre>", '<span class="tg-spoiler">',
    "</span>", "<blockquote>", "</blockquote>", '<a href="https://e.org/x">', '<a href="javascript:x()">',
    "</a>", "&lt;", "&amp;", "&#128512;", "&", " https://a.b/c ", "text", "\n", "<u>", "</u>", "<script>",
])


def _walk(nodes: list[Node]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for node in nodes:
        if isinstance(node, dict):
            found.append(node)
            found.extend(_walk(node["c"]))
    return found


@given(st.lists(_FRAGMENTS, max_size=12).map("".join))
def test_any_text_the_emulator_accepts_shows_its_plain_text_with_safe_nodes_only(text: str) -> None:
    nodes = to_nodes(text, "HTML")
    try:
        expected = plain_text(text, "HTML")
    except ApiError:
        assert nodes == [text]  # refused by sendMessage: never reaches a chat; shown as text anyway
        return
    assert plain(nodes) == expected
    for node in _walk(nodes):
        assert node["t"] in ALLOWED_TAGS
        if node["t"] == "a":
            assert node["href"].startswith(("http://", "https://"))


def test_the_file_store_forgets_the_oldest_bytes_first() -> None:
    store = FileStore(max_bytes=10)
    store.put("a", b"1234", "image/png")
    store.put("b", b"5678", "image/png")
    store.put("c", b"90ab", "image/png")
    store.put("huge", b"x" * 11, "image/png")
    assert store.get("a") is None and store.get("huge") is None
    assert store.get("b") is not None and store.get("c") is not None
    assert store.size == 8


def test_content_types_come_from_the_bytes_then_the_declaration_then_the_name() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    assert content_type_of(png, "application/octet-stream", "qr.bin") == "image/png"
    assert content_type_of(b"\xff\xd8\xff\xe0", None, None) == "image/jpeg"
    assert content_type_of(b"a,b\n", "application/octet-stream", "users.csv") == "text/csv"
    assert content_type_of(b"{}", "Application/JSON", None) == "application/json"
    assert content_type_of(b"??", None, None) == "application/octet-stream"
