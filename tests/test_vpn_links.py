"""Share links, the nodes file, the subscription document and QR codes (no network)."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import struct
import uuid as uuidlib
import zlib
from typing import Any

import pytest
import segno
from hypothesis import given
from hypothesis import strategies as st

from atlas.vpn.links import parse_vless_link, vless_link
from atlas.vpn.nodes import NodeConfig, NodeConfigError, load_nodes_file, parse_nodes
from atlas.vpn.qr import qr_png
from atlas.vpn.subscription import (
    SubscriptionUserInfo,
    is_valid_token_format,
    render_subscription,
    subscription_token,
)

TOKEN = "s3cret-token-0123456789"
PBK = "Z84J2IelR9ch3k8VtlVhhs5ycBUlXA7wHBWcBrjqnAw"
UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"


def node(**overrides: Any) -> NodeConfig:
    fields: dict[str, Any] = {
        "name": "ams-1",
        "agent_url": "https://10.0.0.5:8443",
        "token": TOKEN,
        "public_host": "ams1.example.com",
        "port": 443,
        "security": "reality",
        "sni": "www.microsoft.com",
        "fp": "chrome",
        "pbk": PBK,
        "sid": "6ba85179e30d4fc2",
        "flow": "xtls-rprx-vision",
        "label": "Amsterdam",
    }
    fields.update(overrides)
    return NodeConfig(**fields)


# -- links: exact format ------------------------------------------------------------------------


def test_reality_link_matches_the_reference_format_exactly() -> None:
    assert vless_link(UUID.upper(), node()) == (
        f"vless://{UUID}@ams1.example.com:443?encryption=none&type=tcp&security=reality"
        f"&sni=www.microsoft.com&fp=chrome&pbk={PBK}&sid=6ba85179e30d4fc2&flow=xtls-rprx-vision#Amsterdam"
    )


def test_tls_link_has_sni_and_fp_and_no_reality_params() -> None:
    link = vless_link(UUID, node(security="tls", pbk="", sid="", sni="vpn.example.com", fp="firefox"))
    assert link == (
        f"vless://{UUID}@ams1.example.com:443?encryption=none&type=tcp&security=tls"
        "&sni=vpn.example.com&fp=firefox&flow=xtls-rprx-vision#Amsterdam"
    )


def test_none_link_has_only_encryption_type_security() -> None:
    link = vless_link(UUID, node(security="none", sni="", pbk="", sid="", flow="", port=8080))
    assert link == f"vless://{UUID}@ams1.example.com:8080?encryption=none&type=tcp&security=none#Amsterdam"


def test_ws_link_carries_path_and_host_and_never_flow() -> None:
    cfg = node(
        security="tls",
        pbk="",
        sid="",
        flow="",
        transport="ws",
        path="/ray?ed=2048",
        host_header="cdn.example.com",
    )
    parsed = parse_vless_link(vless_link(UUID, cfg))
    assert dict(parsed.params) == {
        "encryption": "none",
        "type": "ws",
        "path": "/ray?ed=2048",
        "host": "cdn.example.com",
        "security": "tls",
        "sni": "www.microsoft.com",
        "fp": "chrome",
    }
    assert "path=%2Fray%3Fed%3D2048" in vless_link(UUID, cfg)


def test_ipv6_host_is_bracketed_and_label_is_percent_encoded() -> None:
    link = vless_link(UUID, node(public_host="2001:db8::1"), label="Нидерланды #1 & co")
    assert link.startswith(f"vless://{UUID}@[2001:db8::1]:443?")
    fragment = link.split("#", 1)[1]
    assert fragment == "%D0%9D%D0%B8%D0%B4%D0%B5%D1%80%D0%BB%D0%B0%D0%BD%D0%B4%D1%8B%20%231%20%26%20co"
    parsed = parse_vless_link(link)
    assert (parsed.host, parsed.port, parsed.label) == ("2001:db8::1", 443, "Нидерланды #1 & co")


def test_vless_link_rejects_a_non_uuid() -> None:
    with pytest.raises(ValueError, match="not a UUID"):
        vless_link("not-a-uuid", node())


# -- links: round trip --------------------------------------------------------------------------

_label = r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
hostnames = st.from_regex(rf"{_label}(\.{_label}){{0,3}}", fullmatch=True)
hosts = st.one_of(
    hostnames,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@st.composite
def node_configs(draw: st.DrawFn) -> NodeConfig:
    security = draw(st.sampled_from(["none", "tls", "reality"]))
    transport = draw(st.sampled_from(["tcp", "ws"]))
    fields: dict[str, Any] = {
        "name": "n1",
        "agent_url": "http://127.0.0.1:1",
        "token": TOKEN,
        "public_host": draw(hosts),
        "port": draw(st.integers(1, 65535)),
        "security": security,
        "transport": transport,
    }
    if security != "none":
        fields["sni"] = draw(hostnames) if security == "reality" else draw(st.one_of(st.just(""), hostnames))
        fields["fp"] = draw(st.sampled_from(["chrome", "firefox", "safari", "randomized"]))
    if security == "reality":
        fields["pbk"] = (
            base64.urlsafe_b64encode(draw(st.binary(min_size=32, max_size=32))).decode().rstrip("=")
        )
        fields["sid"] = draw(st.binary(max_size=8)).hex()
    if transport == "tcp" and security != "none":
        fields["flow"] = draw(st.sampled_from(["", "xtls-rprx-vision"]))
    if transport == "ws":
        fields["path"] = "/" + draw(
            st.text(
                st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Z", "C")),
                max_size=20,
            )
        )
        fields["host_header"] = draw(st.one_of(st.just(""), hostnames))
    return NodeConfig(**fields)


@given(uuid=st.uuids(), cfg=node_configs(), label=st.text(max_size=40))
def test_links_round_trip(uuid: uuidlib.UUID, cfg: NodeConfig, label: str) -> None:
    link = vless_link(str(uuid), cfg, label)
    assert link.isascii() and " " not in link
    parsed = parse_vless_link(link)
    assert parsed.uuid == str(uuid)
    assert parsed.host == cfg.public_host
    assert parsed.port == cfg.port
    assert parsed.label == label
    assert parsed.security == cfg.security
    assert parsed.transport == cfg.transport
    assert parsed.param("encryption") == "none"
    expected_keys = {"encryption", "type", "security"}
    if cfg.security == "reality":
        expected_keys |= {"sni", "fp", "pbk", "sid"}
        assert (parsed.param("pbk"), parsed.param("sid")) == (cfg.pbk, cfg.sid)
    if cfg.security == "tls":
        expected_keys |= {"fp"} | ({"sni"} if cfg.sni else set())
    if cfg.security != "none":
        assert (parsed.param("sni"), parsed.param("fp")) == (cfg.sni, cfg.fp)
    if cfg.flow:
        expected_keys.add("flow")
        assert parsed.param("flow") == cfg.flow
    if cfg.transport == "ws":
        expected_keys |= {"path"} | ({"host"} if cfg.host_header else set())
        assert parsed.param("path") == cfg.path
    assert set(parsed.params) == expected_keys


@pytest.mark.parametrize(
    ("link", "message"),
    [
        ("", "not a VLESS link"),
        ("vmess://abc", "not a VLESS link"),
        ("vless://", "no user id"),
        (f"vless://{UUID}@host", "host:port"),
        (f"vless://{UUID}@host:0?security=none", "port"),
        (f"vless://{UUID}@host:99999", "port"),
        (f"vless://{UUID}@host:abc", "port"),
        (f"vless://{UUID}@2001:db8::1:443", "brackets"),
        (f"vless://{UUID}@[zz::1]:443", "not an IPv6"),
        (f"vless://{UUID}@[::1]443", "bracketed"),
        ("vless://nope@host:443", "not a UUID"),
        (f"vless://{UUID}@host:443?security=magic", "unknown security"),
        (f"vless://{UUID}@host:443?type=grpc", "transport"),
        (f"vless://{UUID}@host:443?encryption=aes", "encryption"),
        (f"vless://{UUID}@host:443?security=reality&sni=a", "pbk"),
        (f"vless://{UUID}@host:443?a=1&a=2", "repeats"),
        (f"vless://{UUID}@host:443?security", "malformed query"),
        (f"vless://{UUID}@host:443#%FF", "UTF-8"),
        (f"vless://{UUID}@host:443 #x", "whitespace"),
    ],
)
def test_parse_rejects_garbage_with_a_clear_message(link: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_vless_link(link)


@given(st.text(max_size=200))
def test_parse_never_fails_with_anything_but_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_vless_link(text)


# -- the nodes file -----------------------------------------------------------------------------

NODES_TOML = f"""
[[nodes]]
name = "ams-1"
agent_url = "https://10.0.0.5:8443"
token = "{TOKEN}"
public_host = "ams1.example.com"
port = 443
sni = "www.microsoft.com"
pbk = "{PBK}"
sid = "6ba85179e30d4fc2"
flow = "xtls-rprx-vision"
label = "Amsterdam"

[[nodes]]
name = "fra-1"
agent_url = "http://10.0.0.6:8080/"
token = "{TOKEN}"
public_host = "2001:db8::7"
port = 8443
enabled = false
security = "tls"
transport = "ws"
path = "/ws"
"""


def test_load_nodes_file_parses_every_field() -> None:
    ams, fra = load_nodes_file(NODES_TOML)
    assert ams == node()
    assert (fra.name, fra.enabled, fra.security, fra.transport, fra.path, fra.fp) == (
        "fra-1",
        False,
        "tls",
        "ws",
        "/ws",
        "chrome",
    )
    assert fra.display_label == "fra-1"


def test_token_never_appears_in_repr_or_errors() -> None:
    assert TOKEN not in repr(node())
    with pytest.raises(NodeConfigError) as info:
        parse_nodes([{**_raw(), "token": "short secret"}])
    assert "short secret" not in str(info.value)
    assert "nodes[0].token" in str(info.value)


def _raw(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "n",
        "agent_url": "http://127.0.0.1:9000",
        "token": TOKEN,
        "public_host": "example.com",
        "port": 443,
        "security": "none",
    }
    raw.update(overrides)
    return raw


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"port": 70000}, "nodes[1].port: must be an integer in 1..65535, got 70000"),
        ({"port": "443"}, "nodes[1].port: must be an integer"),
        ({"port": True}, "nodes[1].port: must be an integer"),
        ({"enabled": "yes"}, "nodes[1].enabled: must be true or false"),
        ({"name": "Bad Name"}, "nodes[1].name: must match"),
        ({"name": "n"}, "nodes[1].name: duplicate of nodes[0].name 'n'"),
        ({"agent_url": "ftp://x"}, "nodes[1].agent_url"),
        ({"agent_url": "http://u:p@x"}, "nodes[1].agent_url: must not carry credentials"),
        ({"public_host": "[2001:db8::1]"}, "nodes[1].public_host: write an IPv6 address without brackets"),
        ({"public_host": "bad host"}, "nodes[1].public_host: must be a hostname"),
        ({"security": "xtls"}, "nodes[1].security: must be one of"),
        ({"transport": "grpc"}, "nodes[1].transport: must be one of"),
        ({"flow": "xtls-rprx-vision"}, "nodes[1].flow: is only allowed with security tls or reality"),
        (
            {"security": "tls", "transport": "ws", "flow": "xtls-rprx-vision"},
            "nodes[1].flow: is only allowed",
        ),
        ({"flow": "xtls-rprx-direct"}, "nodes[1].flow: must be one of"),
        ({"security": "reality", "sni": "a.com"}, "nodes[1].pbk: must be the 43-character"),
        ({"security": "reality", "pbk": PBK}, "nodes[1].sni: is required with security reality"),
        ({"security": "reality", "pbk": PBK, "sni": "a.com", "sid": "abc"}, "nodes[1].sid"),
        ({"security": "tls", "fp": "netscape"}, "nodes[1].fp: must be one of"),
        ({"security": "tls", "sid": "ab"}, "nodes[1].sid: is only allowed with security reality"),
        ({"sni": "a.com"}, "nodes[1].sni: is only allowed with security tls or reality"),
        ({"path": "/x"}, "nodes[1].path: is only allowed with transport ws"),
        ({"transport": "ws", "path": "x"}, "nodes[1].path: must start with '/'"),
        ({"label": "a\nb"}, "nodes[1].label"),
        ({"colour": "red"}, "nodes[1].colour: unknown field"),
    ],
)
def test_parse_nodes_names_the_field(overrides: dict[str, Any], problem: str) -> None:
    second = _raw(name="m")
    second.update(overrides)
    with pytest.raises(NodeConfigError) as info:
        parse_nodes([_raw(), second])
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_parse_nodes_reports_every_problem_at_once() -> None:
    with pytest.raises(NodeConfigError) as info:
        parse_nodes([_raw(port=0, security="nope"), {"name": "x"}, "junk"])
    problems = info.value.problems
    assert "nodes[0].port: must be an integer in 1..65535, got 0" in problems
    assert any(p.startswith("nodes[0].security") for p in problems)
    assert "nodes[1].agent_url: is required" in problems
    assert "nodes[2]: must be a table, got str" in problems


def test_load_nodes_file_rejects_bad_toml_and_unknown_keys() -> None:
    with pytest.raises(NodeConfigError, match="invalid TOML"):
        load_nodes_file("[[nodes]\nname=")
    with pytest.raises(NodeConfigError, match="unknown top-level key"):
        load_nodes_file("node = 1")
    assert load_nodes_file("") == ()


# -- subscription -------------------------------------------------------------------------------


def _userinfo(header: str) -> dict[str, int]:
    return {k.strip(): int(v) for k, v in (part.split("=") for part in header.split(";"))}


def test_subscription_body_and_headers() -> None:
    links = [vless_link(UUID, node()), vless_link(UUID, node(name="b", public_host="::1"), "Б")]
    expire = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    body, headers = render_subscription(
        links,
        userinfo=SubscriptionUserInfo(upload=0, download=1234, total=10 * 2**30, expire=expire),
        title="Atlas VPN — мой",
        update_interval_hours=12,
        support_url="https://t.me/atlas_support",
    )
    assert base64.b64decode(body, validate=True).decode().split("\n") == links
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert _userinfo(headers["subscription-userinfo"]) == {
        "upload": 0,
        "download": 1234,
        "total": 10 * 2**30,
        "expire": int(expire.timestamp()),
    }
    assert headers["profile-update-interval"] == "12"
    prefix, _, b64 = headers["profile-title"].partition(":")
    assert prefix == "base64" and base64.b64decode(b64).decode() == "Atlas VPN — мой"
    assert headers["content-disposition"] == 'attachment; filename="Atlas_VPN______"'
    assert headers["support-url"] == "https://t.me/atlas_support"
    assert all(name == name.lower() and value.isascii() for name, value in headers.items())


def test_subscription_unlimited_and_validation() -> None:
    body, headers = render_subscription(
        [], userinfo=SubscriptionUserInfo(0, 0, 0, None), title="t", filename="atlas.txt"
    )
    assert body == b""
    assert headers["subscription-userinfo"] == "upload=0; download=0; total=0; expire=0"
    assert headers["content-disposition"] == 'attachment; filename="atlas.txt"'
    assert "support-url" not in headers
    info = SubscriptionUserInfo(0, 0, 0, None)
    with pytest.raises(ValueError, match="single line"):
        render_subscription(["a\nb"], userinfo=info, title="t")
    with pytest.raises(ValueError, match="update_interval_hours"):
        render_subscription([], userinfo=info, title="t", update_interval_hours=0)
    with pytest.raises(ValueError, match="support_url"):
        render_subscription([], userinfo=info, title="t", support_url="javascript:alert(1)")
    with pytest.raises(ValueError, match="download"):
        SubscriptionUserInfo(0, -1, 0, None)
    with pytest.raises(ValueError, match="timezone-aware"):
        SubscriptionUserInfo(0, 0, 0, dt.datetime(2027, 1, 1))


def test_subscription_tokens() -> None:
    tokens = {subscription_token() for _ in range(1000)}
    assert len(tokens) == 1000
    for token in tokens:
        # 32 URL-safe base64 characters = 192 bits >= 128.
        assert len(token) == 32 and len(token) * 6 >= 128
        assert is_valid_token_format(token)
        assert base64.urlsafe_b64decode(token + "==")  # decodable: it is token_urlsafe output
    alphabet = set("".join(tokens))
    assert alphabet <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(alphabet) == 64  # all symbols used: no accidental narrowing of the alphabet
    for bad in ["", "short", "a" * 21, "a" * 65, "a" * 31 + "/", "a" * 31 + "=", "a" * 31 + ".", "ä" * 32]:
        assert not is_valid_token_format(bad), bad


# -- QR -----------------------------------------------------------------------------------------


def _decode_png(data: bytes) -> list[list[int]]:
    """A tiny PNG reader for segno's output (greyscale, 1 bit, filters None and Up)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        assert zlib.crc32(kind + body) == crc
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert (depth, colour) == (1, 0)
    raw = zlib.decompress(idat)
    stride = (width + 7) // 8
    rows: list[list[int]] = []
    previous = bytes(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        filter_type, scan = line[0], line[1:]
        assert filter_type in (0, 2)
        if filter_type == 2:
            scan = bytes((a + b) & 0xFF for a, b in zip(scan, previous, strict=True))
        previous = scan
        bits = [(scan[x // 8] >> (7 - x % 8)) & 1 for x in range(width)]
        rows.append([1 - bit for bit in bits])  # black (0) is a dark module
    return rows


def test_qr_png_encodes_segnos_matrix() -> None:
    text = vless_link(UUID, node())
    small, big = qr_png(text, scale=2), qr_png(text, scale=8)
    assert small[:8] == big[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(big) > len(small)
    expected = [list(row) for row in segno.make_qr(text, error="m", boost_error=False).matrix]
    for scale, png in ((2, small), (8, big)):
        image = _decode_png(png)
        size = len(expected) + 8
        assert len(image) == len(image[0]) == size * scale
        modules = [
            [image[(y + 4) * scale][(x + 4) * scale] for x in range(len(expected))]
            for y in range(len(expected))
        ]
        assert modules == expected
        border = image[: 4 * scale]
        assert all(pixel == 0 for row in border for pixel in row)


def test_qr_png_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        qr_png("")
    with pytest.raises(ValueError, match="scale"):
        qr_png("x", scale=0)
    with pytest.raises(ValueError, match="too long"):
        qr_png("x" * 5000)


def test_hypothesis_hosts_are_what_the_config_accepts() -> None:
    # Guard against the round-trip test silently generating only one kind of host.
    assert NodeConfig(**{**_raw(), "public_host": str(ipaddress.IPv6Address(1))}).public_host == "::1"
