"""The subscription formats without a network: which client gets what, and what each format holds.

The Clash YAML is read back with PyYAML (an independent YAML parser); the share links are read
back both by Atlas's parser and by a parser written here from the URI grammar with the standard
library, and both must agree with the node they came from. Real clients load these formats in
``tests/test_vpn_client_formats.py``.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from atlas.vpn.endpoint import PLACEHOLDER_UUID, Endpoint, endpoint_for, placeholder, unique_labels
from atlas.vpn.formats import CLIENT_RULES, Format, choose_format, client_rule, render_profile, yaml_text
from atlas.vpn.formats.clash import AUTO_GROUP
from atlas.vpn.links import parse_vless_link
from atlas.vpn.nodes import NodeConfig
from tests._client_agents import REAL_USER_AGENTS

UUID = "7d9e1c52-3b1a-4f4e-9a51-0c2f8d6b4e10"
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def node(**overrides: Any) -> NodeConfig:
    fields: dict[str, Any] = {
        "name": "ams",
        "agent_url": "http://10.0.0.1:8765",
        "token": "t" * 16,
        "public_host": "ams.example.com",
        "port": 443,
        "sni": "www.microsoft.com",
        "pbk": "Zl8bDo3NGeHhVh8wO9yXyvLwbdLxLZ6OyqDi3Ma7tAQ",
        "sid": "6ba85179e30d4fc2",
        "flow": "xtls-rprx-vision",
        "label": "Amsterdam",
    }
    fields.update(overrides)
    return NodeConfig(**fields)


NODES = (
    node(),
    node(
        name="fra",
        public_host="2001:db8::1",
        port=8443,
        security="tls",
        sni="fra.example.com",
        pbk="",
        sid="",
        flow="",
        label="Frankfurt",
        fp="firefox",
    ),
    node(
        name="cdn",
        public_host="cdn.example.com",
        security="tls",
        transport="ws",
        path="/ray?ed=2048",
        host_header="edge.example.com",
        sni="",
        pbk="",
        sid="",
        flow="",
        label="CDN & co",
    ),
    node(
        name="raw",
        public_host="203.0.113.7",
        port=8080,
        security="none",
        sni="",
        pbk="",
        sid="",
        flow="",
        label="Plain",
    ),
)
ENDPOINTS = tuple(endpoint_for(UUID, n) for n in NODES)
EXPIRED = (
    placeholder("⌛ Subscription expired — renew in @atlas_bot"),
    placeholder("📅 Expired on 2025-03-04"),
)


# --- which client gets which format -------------------------------------------------------------



@pytest.mark.parametrize(("user_agent", "expected"), REAL_USER_AGENTS)
def test_each_client_gets_its_format(user_agent: str, expected: Format) -> None:
    assert choose_format(user_agent, "*/*") is expected


def test_the_table_covers_at_least_fifteen_real_clients_and_every_format() -> None:
    assert len(REAL_USER_AGENTS) >= 15
    assert {fmt for _, fmt in REAL_USER_AGENTS} == {Format.BASE64, Format.CLASH, Format.SINGBOX, Format.XRAY}
    matched = {rule.client for ua, _ in REAL_USER_AGENTS if (rule := client_rule(ua)) is not None}
    assert matched == {rule.client for rule in CLIENT_RULES}, "a rule no real User-Agent exercises"


def test_a_browser_gets_the_page_and_a_path_overrides_everything() -> None:
    assert choose_format(CHROME, BROWSER_ACCEPT) is Format.HTML
    assert choose_format(CHROME, "*/*") is Format.BASE64  # a script with a browser's UA
    assert choose_format("clash-verge/v2.0.3", BROWSER_ACCEPT) is Format.CLASH  # a known app wins
    assert choose_format(CHROME, BROWSER_ACCEPT, Format.CLASH) is Format.CLASH
    assert choose_format("v2rayNG/1.8.19", "*/*", Format.SINGBOX) is Format.SINGBOX


# --- the small YAML emitter --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "yes",
        "no",
        "0x10",
        "1e3",
        "~",
        "null",
        "a: b",
        "- x",
        "#c",
        "'q'",
        '"dq"',
        "\\",
        "⌛ …",
        "\t\x00\x1b",
        "",
        " lead",
        "trail ",
        "\u2028",
        "😀",
        "a\nb",
    ],
)
def test_yaml_strings_read_back_exactly(text: str) -> None:
    document = {"k": text, "list": [text, {"name": text}]}
    assert yaml.safe_load(yaml_text.dump(document)) == document


def test_yaml_nested_structures_and_scalars_read_back() -> None:
    document = {
        "a": 1,
        "b": True,
        "c": False,
        "d": [],
        "e": {},
        "f": [[1, 2], {"x": {"y": ["z"]}}],
        "g-h": -5,
    }
    assert yaml.safe_load(yaml_text.dump(document)) == document
    with pytest.raises(TypeError):
        yaml_text.dump({"f": 1.5})
    with pytest.raises(TypeError):
        yaml_text.dump({"bad key": 1})


# --- share links -------------------------------------------------------------------------------


def independent_parse(link: str) -> dict[str, Any]:
    """A second reading of a vless:// link, from the URI grammar with urllib (not Atlas's parser)."""
    parts = urlsplit(link)
    assert parts.scheme == "vless"
    pairs = parse_qs(parts.query, keep_blank_values=True)
    assert all(len(values) == 1 for values in pairs.values()), "a repeated parameter"
    return {
        "uuid": unquote(parts.username or ""),
        "address": parts.hostname,
        "port": parts.port,
        "label": unquote(parts.fragment),
        "params": {key: values[0] for key, values in pairs.items()},
    }


def test_base64_links_read_the_same_by_both_parsers_and_match_the_nodes() -> None:
    body, content_type = render_profile(Format.BASE64, ENDPOINTS, title="Atlas VPN")
    assert content_type.startswith("text/plain")
    lines = base64.b64decode(body, validate=True).decode().split("\n")
    assert len(lines) == len(NODES)
    for line, source in zip(lines, NODES, strict=True):
        ours = parse_vless_link(line)
        theirs = independent_parse(line)
        params = theirs["params"]
        assert (ours.uuid, ours.host, ours.port, ours.label, dict(ours.params)) == (
            theirs["uuid"],
            theirs["address"],
            theirs["port"],
            theirs["label"],
            params,
        )
        assert (theirs["uuid"], theirs["address"], theirs["port"], theirs["label"]) == (
            UUID,
            source.public_host,
            source.port,
            source.display_label,
        )
        assert params["encryption"] == "none"
        assert params["security"] == source.security and params["type"] == source.transport
        if source.security == "reality":
            assert (params["pbk"], params["sid"], params["sni"], params["fp"], params["flow"]) == (
                source.pbk,
                source.sid,
                source.sni,
                source.fp,
                "xtls-rprx-vision",
            )
        else:
            assert "flow" not in params and "pbk" not in params
        if source.transport == "ws":
            assert (params["path"], params["host"]) == (source.path, source.host_header)


# --- Clash / Mihomo ----------------------------------------------------------------------------


def test_clash_yaml_parses_and_every_vless_proxy_has_mihomos_fields() -> None:
    body, content_type = render_profile(Format.CLASH, ENDPOINTS, title="Atlas VPN")
    assert content_type.startswith("text/yaml")
    profile = yaml.safe_load(body.decode())
    proxies = profile["proxies"]
    assert [p["name"] for p in proxies] == [n.display_label for n in NODES]
    for proxy, source in zip(proxies, NODES, strict=True):
        for field in ("type", "name", "server", "port", "uuid", "network", "tls", "flow", "udp"):
            assert field in proxy, (source.name, field)
        assert proxy["type"] == "vless" and proxy["uuid"] == UUID
        assert (proxy["server"], proxy["port"], proxy["network"]) == (
            source.public_host,
            source.port,
            source.transport,
        )
        assert isinstance(proxy["port"], int) and isinstance(proxy["tls"], bool)
        assert proxy["tls"] is (source.security != "none")
        if proxy["tls"]:
            assert proxy["servername"] == (source.sni or source.public_host)
            assert proxy["client-fingerprint"] == source.fp
        else:
            assert "servername" not in proxy and "reality-opts" not in proxy
        if source.security == "reality":
            assert proxy["reality-opts"] == {"public-key": source.pbk, "short-id": source.sid}
            assert proxy["flow"] == "xtls-rprx-vision"
        else:
            assert "reality-opts" not in proxy and proxy["flow"] == ""
        if source.transport == "ws":
            assert proxy["ws-opts"] == {"path": source.path, "headers": {"Host": source.host_header}}
    select, auto = profile["proxy-groups"]
    assert select == {
        "name": "Atlas VPN",
        "type": "select",
        "proxies": [AUTO_GROUP, *[p["name"] for p in proxies]],
    }
    assert auto["type"] == "url-test" and auto["proxies"] == [p["name"] for p in proxies]
    assert profile["rules"][-1] == "MATCH,Atlas VPN"
    names = {p["name"] for p in proxies} | {g["name"] for g in profile["proxy-groups"]} | {"DIRECT", "REJECT"}
    for rule in profile["rules"]:
        target = rule.split(",")[2] if not rule.startswith("MATCH") else rule.split(",")[1]
        assert target in names, rule


# --- sing-box and Xray JSON (structure; real cores load them in test_vpn_client_formats) ---------


def test_singbox_json_has_one_vless_outbound_per_server_behind_a_selector() -> None:
    body, content_type = render_profile(Format.SINGBOX, ENDPOINTS, title="Atlas VPN")
    assert content_type.startswith("application/json")
    config = json.loads(body)
    by_tag = {o["tag"]: o for o in config["outbounds"]}
    assert len(by_tag) == len(config["outbounds"]), "outbound tags must be unique"
    assert config["route"]["final"] == "Atlas VPN"
    assert by_tag["Atlas VPN"]["outbounds"] == ["⚡ Auto", *[n.display_label for n in NODES]]
    reality = by_tag["Amsterdam"]
    assert reality["tls"]["reality"] == {
        "enabled": True,
        "public_key": NODES[0].pbk,
        "short_id": NODES[0].sid,
    }
    assert reality["tls"]["server_name"] == "www.microsoft.com" and reality["flow"] == "xtls-rprx-vision"
    assert by_tag["CDN & co"]["transport"] == {
        "type": "ws",
        "path": "/ray?ed=2048",
        "headers": {"Host": "edge.example.com"},
    }
    assert "tls" not in by_tag["Plain"] and "flow" not in by_tag["Plain"]
    for tag in by_tag["Atlas VPN"]["outbounds"]:
        assert tag in by_tag


def test_xray_json_is_a_list_of_whole_configs_named_by_remarks() -> None:
    body, _ = render_profile(Format.XRAY, ENDPOINTS, title="Atlas VPN")
    configs = json.loads(body)
    assert [c["remarks"] for c in configs] == [n.display_label for n in NODES]
    reality = configs[0]["outbounds"][0]
    assert reality["protocol"] == "vless"
    assert reality["settings"]["vnext"][0] == {
        "address": "ams.example.com",
        "port": 443,
        "users": [{"id": UUID, "encryption": "none", "level": 0, "flow": "xtls-rprx-vision"}],
    }
    assert reality["streamSettings"]["realitySettings"]["publicKey"] == NODES[0].pbk
    ws = configs[2]["outbounds"][0]["streamSettings"]
    assert ws["wsSettings"] == {"path": "/ray?ed=2048", "headers": {"Host": "edge.example.com"}}
    assert ws["tlsSettings"]["serverName"] == "cdn.example.com"


# --- placeholders, labels ----------------------------------------------------------------------


def placeholder_names(fmt: Format, body: bytes) -> list[str]:
    if fmt is Format.BASE64:
        return [parse_vless_link(line).label for line in base64.b64decode(body).decode().split("\n")]
    if fmt is Format.CLASH:
        return [p["name"] for p in yaml.safe_load(body.decode())["proxies"]]
    if fmt is Format.SINGBOX:
        return [o["tag"] for o in json.loads(body)["outbounds"] if o["type"] == "vless"]
    return [c["remarks"] for c in json.loads(body)]


@pytest.mark.parametrize("fmt", [Format.BASE64, Format.CLASH, Format.SINGBOX, Format.XRAY])
def test_the_expired_placeholder_appears_in_every_format(fmt: Format) -> None:
    body, _ = render_profile(fmt, EXPIRED, title="Atlas VPN")
    assert placeholder_names(fmt, body) == [p.label for p in EXPIRED]
    if fmt is Format.CLASH:
        profile = yaml.safe_load(body.decode())
        assert [g["name"] for g in profile["proxy-groups"]] == ["Atlas VPN"]  # nothing to url-test
        assert all(p["server"] == "0.0.0.0" and p["uuid"] == PLACEHOLDER_UUID for p in profile["proxies"])
    if fmt is Format.SINGBOX:
        assert "default" not in json.loads(body)["outbounds"][0]


def test_repeated_and_reserved_labels_are_made_distinct() -> None:
    twins = [
        endpoint_for(UUID, node(label="Amsterdam")),
        endpoint_for(UUID, node(name="b", label="Amsterdam")),
    ]
    assert [e.label for e in unique_labels(twins)] == ["Amsterdam", "Amsterdam 2"]
    clashing = [
        endpoint_for(UUID, node(label="direct")),
        endpoint_for(UUID, node(name="b", label="Atlas VPN")),
    ]
    config = json.loads(render_profile(Format.SINGBOX, clashing, title="Atlas VPN")[0])
    tags = [o["tag"] for o in config["outbounds"]]
    assert len(set(tags)) == len(tags)
    with pytest.raises(ValueError, match="html"):
        render_profile(Format.HTML, ENDPOINTS, title="t")
    with pytest.raises(ValueError):
        placeholder("")
    assert isinstance(EXPIRED[0], Endpoint) and EXPIRED[0].placeholder
