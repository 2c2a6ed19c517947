"""VLESS share links, the ``vless://`` URIs that v2rayNG, Hiddify, Streisand and others import.

Format (REFERENCE.md, "Xray / V2Ray user management")::

    vless://UUID@host:port?encryption=none&type=tcp&security=reality&sni=..&fp=chrome&pbk=..&sid=..
        &flow=xtls-rprx-vision#Name

* ``security=reality``: ``sni``, ``fp``, ``pbk``, ``sid`` (``sid`` may be empty, it is still sent).
* ``security=tls``: ``sni`` (when configured) and ``fp``.
* ``security=none``: nothing else.
* ``type=ws`` adds ``path`` and, when configured, ``host``.
* ``flow`` only for tls/reality over tcp, and only when the node sets one.

Every parameter value and the fragment are percent-encoded with nothing left "safe" (UTF-8, space
as ``%20``, never ``+``), which every client decodes the same way. IPv6 hosts are bracketed.

:func:`parse_vless_link` reads such a link back (tests, the demo, and any link a user pastes);
anything else raises ``ValueError`` saying what is wrong.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import parse_qsl, quote, unquote

from atlas.vpn.endpoint import Endpoint, canonical_uuid, endpoint_for
from atlas.vpn.nodes import SECURITIES, TRANSPORTS, NodeConfig, is_ipv6_literal


def vless_link(uuid: str, node: NodeConfig, label: str | None = None) -> str:
    """Return the share link for key ``uuid`` on ``node``, named ``label`` (default: the node's).

    ``uuid`` is written in canonical lower-case form. Raises ``ValueError`` if it is not a UUID.
    """
    return share_link(endpoint_for(uuid, node, label))


def share_link(endpoint: Endpoint) -> str:
    """The ``vless://`` link of ``endpoint`` (a node's entry or a placeholder); see the module docstring."""
    host = f"[{endpoint.host}]" if is_ipv6_literal(endpoint.host) else endpoint.host
    params: list[tuple[str, str]] = [("encryption", "none"), ("type", endpoint.transport)]
    if endpoint.transport == "ws":
        params.append(("path", endpoint.path))
        if endpoint.host_header:
            params.append(("host", endpoint.host_header))
    params.append(("security", endpoint.security))
    if endpoint.security == "reality":
        params += [("sni", endpoint.sni), ("fp", endpoint.fp), ("pbk", endpoint.pbk), ("sid", endpoint.sid)]
    elif endpoint.security == "tls":
        if endpoint.sni:
            params.append(("sni", endpoint.sni))
        params.append(("fp", endpoint.fp))
    if endpoint.effective_flow:
        params.append(("flow", endpoint.effective_flow))
    query = "&".join(f"{key}={quote(value, safe='')}" for key, value in params)
    return f"vless://{endpoint.uuid}@{host}:{endpoint.port}?{query}#{quote(endpoint.label, safe='')}"


@dataclass(frozen=True, slots=True)
class VlessLink:
    """A parsed share link. ``host`` is unbracketed; absent parameters read as ``""``."""

    uuid: str
    host: str
    port: int
    label: str
    params: Mapping[str, str]

    @property
    def security(self) -> str:
        """``none``, ``tls`` or ``reality``."""
        return self.params.get("security", "none")

    @property
    def transport(self) -> str:
        """The ``type`` parameter: ``tcp`` or ``ws``."""
        return self.params.get("type", "tcp")

    def param(self, name: str) -> str:
        """The value of query parameter ``name``, or ``""`` when absent."""
        return self.params.get(name, "")


def parse_vless_link(link: str) -> VlessLink:
    """Parse a ``vless://`` share link; raise ``ValueError`` naming the first problem found."""
    if not isinstance(link, str):
        raise ValueError(f"a VLESS link must be a string, got {type(link).__name__}")
    if any(ch.isspace() or not ch.isprintable() for ch in link):
        raise ValueError("a VLESS link must not contain whitespace or control characters")
    scheme, sep, rest = link.partition("://")
    if not sep or scheme.lower() != "vless":
        raise ValueError(f"not a VLESS link (expected 'vless://...'): {link[:40]!r}")
    rest, _, fragment = rest.partition("#")
    authority, _, query = rest.partition("?")
    authority = authority.removesuffix("/")
    user, at, hostport = authority.rpartition("@")
    if not at or not user:
        raise ValueError("VLESS link has no user id before '@'")
    uuid = canonical_uuid(unquote(user))
    host, port = _split_host_port(hostport)

    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"VLESS link has a malformed query string: {exc}") from exc
    for key, value in pairs:
        if key in params:
            raise ValueError(f"VLESS link repeats parameter {key!r}")
        params[key] = value
    if params.get("encryption", "none") != "none":
        raise ValueError(f"VLESS link: encryption must be 'none', got {params['encryption']!r}")
    if params.get("security", "none") not in SECURITIES:
        raise ValueError(f"VLESS link: unknown security {params['security']!r}")
    if params.get("type", "tcp") not in TRANSPORTS:
        raise ValueError(f"VLESS link: unsupported transport type {params['type']!r}")
    if params.get("security") == "reality" and not params.get("pbk"):
        raise ValueError("VLESS link: security=reality needs a pbk (public key)")
    try:
        label = unquote(fragment, errors="strict")
    except UnicodeDecodeError as exc:
        raise ValueError(f"VLESS link: the name after '#' is not valid UTF-8: {exc}") from exc
    return VlessLink(uuid=uuid, host=host, port=port, label=label, params=MappingProxyType(params))


def _split_host_port(hostport: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, tail = hostport[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            raise ValueError(f"VLESS link: malformed bracketed host {hostport!r} (expected '[v6]:port')")
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"VLESS link: {host!r} in brackets is not an IPv6 address") from exc
        port_text = tail[1:]
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon or not host:
            raise ValueError(f"VLESS link: expected 'host:port', got {hostport!r}")
        if ":" in host:
            raise ValueError(f"VLESS link: IPv6 host must be in brackets, got {hostport!r}")
    if not port_text.isdigit() or not port_text.isascii() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"VLESS link: port must be 1..65535, got {port_text!r}")
    return host, int(port_text)
