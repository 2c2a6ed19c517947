"""The VPN nodes the bot sells access to: one validated, frozen :class:`NodeConfig` per node.

A node has two faces. The *agent* face (``agent_url`` + ``token``) is where the bot manages users
over HTTP; the *public* face (``public_host``, ``port`` and the link parameters) is what goes into
the VLESS share links that customers import. Both are checked here, once, before anything starts.

The nodes file is TOML (``tomllib`` is in the standard library, and operators can comment it)::

    [[nodes]]
    name = "ams-1"                       # unique; [a-z0-9][a-z0-9_-]*, at most 63 characters
    agent_url = "https://10.0.0.5:8443"  # the `atlas node` agent
    token = "long-random-secret"         # at least 16 printable ASCII characters, never logged
    public_host = "ams1.example.com"     # hostname or IP literal (IPv6 without brackets)
    port = 443
    enabled = true                       # optional, default true
    security = "reality"                 # none | tls | reality (default reality)
    transport = "tcp"                    # tcp | ws (default tcp)
    sni = "www.microsoft.com"            # required for reality, optional for tls
    fp = "chrome"                        # uTLS fingerprint for tls/reality (default chrome)
    pbk = "<43-character base64url x25519 public key>"   # reality only, required
    sid = "6ba85179e30d4fc2"             # reality only: 0-16 hex digits, even length
    flow = "xtls-rprx-vision"            # only for tls/reality over tcp (default none)
    label = "Amsterdam"                  # shown in the client app (default: name)
    path = "/ws"                         # ws only (default "/")
    host_header = "cdn.example.com"      # ws only, optional
    agent_ca_file = "/etc/atlas/ams-1-ca.pem"  # optional: CA of a self-signed https agent

Every problem is reported at once, each naming its field the way a JSON path would (zero-based):
``nodes[1].port: must be an integer in 1..65535, got 70000``. A node with a problem is never half
accepted: :func:`parse_nodes` returns all nodes or raises :class:`NodeConfigError`.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Final
from urllib.parse import urlsplit

SECURITIES: Final = frozenset({"none", "tls", "reality"})
TRANSPORTS: Final = frozenset({"tcp", "ws"})
FLOWS: Final = frozenset({"", "xtls-rprx-vision"})
FINGERPRINTS: Final = frozenset(
    {"chrome", "firefox", "safari", "ios", "android", "edge", "360", "qq", "random", "randomized"}
)
MIN_TOKEN_LENGTH: Final = 16

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)
_PBK_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_SID_RE = re.compile(r"([0-9a-f]{2}){0,8}")
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")


class NodeConfigError(ValueError):
    """The nodes configuration is invalid; ``problems`` lists every ``field: reason``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("invalid nodes configuration:\n  " + "\n  ".join(self.problems))


def is_valid_hostname(host: str) -> bool:
    """True for a DNS name (letters, digits, hyphens; dot-separated labels; at most 253 chars)."""
    if not host or len(host) > 253:
        return False
    return all(_LABEL_RE.fullmatch(part) for part in host.removesuffix(".").split("."))


def is_ipv6_literal(host: str) -> bool:
    """True when ``host`` is an IPv6 address written without brackets."""
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return is_valid_hostname(host)
    return True


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One VPN node: how to reach its agent and how customers' links point at it.

    Constructing one validates every field and raises :class:`NodeConfigError` naming them; so a
    ``NodeConfig`` that exists is a valid one. ``token`` is excluded from ``repr`` so that it never
    reaches a log line or a crash report.
    """

    name: str
    agent_url: str
    token: str = field(repr=False)
    public_host: str
    port: int
    enabled: bool = True
    security: str = "reality"
    transport: str = "tcp"
    sni: str = ""
    fp: str = "chrome"
    pbk: str = ""
    sid: str = ""
    flow: str = ""
    label: str = ""
    path: str = "/"
    host_header: str = ""
    agent_ca_file: str = ""

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise NodeConfigError(problems)

    @property
    def display_label(self) -> str:
        """The name shown in client apps: ``label``, or ``name`` when no label is set."""
        return self.label or self.name


def _problems(node: NodeConfig) -> list[str]:
    """Return ``field: reason`` for every invalid field (one small check per field)."""
    out: list[str] = []

    def bad(name: str, reason: str) -> None:
        out.append(f"{name}: {reason}, got {getattr(node, name)!r}")

    str_fields = [f.name for f in fields(node) if f.name not in {"port", "enabled"}]
    for name in str_fields:
        if not isinstance(getattr(node, name), str):
            bad(name, "must be a string")
    port: object = node.port  # typed int, but the value comes from a config file
    if not isinstance(port, int) or isinstance(port, bool):
        bad("port", "must be an integer in 1..65535")
    enabled: object = node.enabled
    if not isinstance(enabled, bool):
        bad("enabled", "must be true or false")
    if out:
        return out  # the checks below assume the types are right

    if not 1 <= node.port <= 65535:
        bad("port", "must be an integer in 1..65535")

    if not _NAME_RE.fullmatch(node.name):
        bad("name", "must match [a-z0-9][a-z0-9_-]* and be at most 63 characters")
    parts = urlsplit(node.agent_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query or parts.fragment:
        bad("agent_url", "must be an http:// or https:// URL with a host and no query or fragment")
    elif parts.username or parts.password:
        out.append("agent_url: must not carry credentials (use token)")
    if len(node.token) < MIN_TOKEN_LENGTH or not _TOKEN_RE.fullmatch(node.token):
        # Never echo the token itself.
        out.append(f"token: must be at least {MIN_TOKEN_LENGTH} printable ASCII characters without spaces")
    if node.agent_ca_file and parts.scheme != "https":
        bad("agent_ca_file", "is only allowed with an https:// agent_url")
    if node.public_host.startswith("["):
        bad("public_host", "write an IPv6 address without brackets")
    elif not _is_host(node.public_host):
        bad("public_host", "must be a hostname or an IP address")
    if node.security not in SECURITIES:
        bad("security", f"must be one of {sorted(SECURITIES)}")
    if node.transport not in TRANSPORTS:
        bad("transport", f"must be one of {sorted(TRANSPORTS)}")
    if node.flow not in FLOWS:
        bad("flow", f"must be one of {sorted(FLOWS)}")
    elif node.flow and not (node.security in {"tls", "reality"} and node.transport == "tcp"):
        bad("flow", "is only allowed with security tls or reality over transport tcp")
    if len(node.label) > 64 or any(not ch.isprintable() for ch in node.label):
        bad("label", "must be at most 64 printable characters")

    if node.security in {"tls", "reality"}:
        if node.sni and not is_valid_hostname(node.sni):
            bad("sni", "must be a hostname")
        if node.fp not in FINGERPRINTS:
            bad("fp", f"must be one of {sorted(FINGERPRINTS)}")
    if node.security == "reality":
        if not node.sni:
            bad("sni", "is required with security reality")
        if not _PBK_RE.fullmatch(node.pbk):
            bad("pbk", "must be the 43-character base64url x25519 public key")
        if not _SID_RE.fullmatch(node.sid):
            bad("sid", "must be 0-16 lower-case hex digits of even length")
    else:
        for name in ("pbk", "sid"):
            if getattr(node, name):
                bad(name, "is only allowed with security reality")
    if node.security == "none" and node.sni:
        bad("sni", "is only allowed with security tls or reality")

    if node.transport == "ws":
        if (
            not node.path.startswith("/")
            or len(node.path) > 256
            or any(c.isspace() or not c.isprintable() for c in node.path)
        ):
            bad("path", "must start with '/', have no spaces or control characters, at most 256 characters")
        if node.host_header and not is_valid_hostname(node.host_header):
            bad("host_header", "must be a hostname")
    else:
        if node.path != "/":
            bad("path", "is only allowed with transport ws")
        if node.host_header:
            bad("host_header", "is only allowed with transport ws")
    return out


_FIELD_NAMES: Final = frozenset(f.name for f in fields(NodeConfig))


def parse_nodes(data: object) -> tuple[NodeConfig, ...]:
    """Validate a list of node tables (``list[dict]``); return every node or raise :class:`NodeConfigError`.

    Problems are named ``nodes[<index>].<field>``. Names must be unique. An empty list is valid
    (a bot with no nodes yet sells nothing but still runs).
    """
    if not isinstance(data, list | tuple):
        raise NodeConfigError([f"nodes: must be a list of tables, got {type(data).__name__}"])
    problems: list[str] = []
    nodes: list[NodeConfig] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(data):
        where = f"nodes[{index}]"
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: must be a table, got {type(raw).__name__}")
            continue
        unknown = sorted(str(key) for key in raw if key not in _FIELD_NAMES)
        missing = sorted(
            name for name in ("name", "agent_url", "token", "public_host", "port") if name not in raw
        )
        problems.extend(f"{where}.{key}: unknown field" for key in unknown)
        problems.extend(f"{where}.{key}: is required" for key in missing)
        if unknown or missing:
            continue
        try:
            node = NodeConfig(**{str(key): value for key, value in raw.items()})
        except NodeConfigError as exc:
            problems.extend(f"{where}.{problem}" for problem in exc.problems)
            continue
        if node.name in seen:
            problems.append(f"{where}.name: duplicate of nodes[{seen[node.name]}].name {node.name!r}")
            continue
        seen[node.name] = index
        nodes.append(node)
    if problems:
        raise NodeConfigError(problems)
    return tuple(nodes)


def load_nodes_file(text: str) -> tuple[NodeConfig, ...]:
    """Parse the TOML nodes file (an array of ``[[nodes]]`` tables); see the module docstring.

    Raises :class:`NodeConfigError` for invalid TOML, unknown top-level keys and invalid nodes.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise NodeConfigError([f"nodes file: invalid TOML: {exc}"]) from exc
    unknown = sorted(key for key in document if key != "nodes")
    if unknown:
        raise NodeConfigError([f"{key}: unknown top-level key (expected only [[nodes]])" for key in unknown])
    return parse_nodes(document.get("nodes", []))
