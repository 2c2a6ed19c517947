"""One server entry of a subscription, in the terms every client format shares: :class:`Endpoint`.

A subscription is rendered for very different clients (share links, Clash/Mihomo YAML, sing-box
JSON, Xray JSON), but each of them describes the same thing: a VLESS server, its TLS or REALITY
parameters, its transport, and the name shown in the app. :func:`endpoint_for` takes that from a
:class:`~atlas.vpn.nodes.NodeConfig` and a key; :func:`placeholder` makes an entry that cannot
connect anywhere and exists only for its name ("⌛ Subscription expired — renew in @bot"): clients
show entry names prominently, so a name is how a state reaches a user of any client.

Client apps key entries by name (Clash proxy names and sing-box tags must be unique, or the whole
profile is refused), so :func:`unique_labels` makes repeated labels distinct before rendering.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from atlas.vpn.nodes import NodeConfig

PLACEHOLDER_HOST: Final = "0.0.0.0"  # an address no client can connect to
PLACEHOLDER_PORT: Final = 1
PLACEHOLDER_UUID: Final = "00000000-0000-0000-0000-000000000000"


def canonical_uuid(value: str) -> str:
    """``value`` as a canonical lower-case UUID; ``ValueError`` if it is not one."""
    try:
        parsed = uuidlib.UUID(value)
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"not a UUID: {value!r}") from exc
    return str(parsed)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A VLESS server as a client sees it. Field meanings are those of :class:`NodeConfig`.

    ``placeholder`` marks an entry that only carries a message in its ``label``.
    """

    label: str
    uuid: str
    host: str
    port: int
    security: str = "none"
    transport: str = "tcp"
    sni: str = ""
    fp: str = "chrome"
    pbk: str = ""
    sid: str = ""
    flow: str = ""
    path: str = "/"
    host_header: str = ""
    placeholder: bool = False

    @property
    def tls(self) -> bool:
        """True for ``tls`` and ``reality`` (both are TLS on the wire)."""
        return self.security in {"tls", "reality"}

    @property
    def server_name(self) -> str:
        """The SNI a client sends: ``sni``, or the host itself for TLS without one configured."""
        return self.sni or self.host

    @property
    def effective_flow(self) -> str:
        """The flow clients must use: only TLS/REALITY over TCP carries one."""
        return self.flow if self.tls and self.transport == "tcp" else ""


def endpoint_for(uuid: str, node: NodeConfig, label: str | None = None) -> Endpoint:
    """The entry for key ``uuid`` on ``node``, named ``label`` (default: the node's display label).

    Raises ``ValueError`` if ``uuid`` is not a UUID (the node is valid by construction).
    """
    return Endpoint(
        label=node.display_label if label is None else label,
        uuid=canonical_uuid(uuid),
        host=node.public_host,
        port=node.port,
        security=node.security,
        transport=node.transport,
        sni=node.sni,
        fp=node.fp,
        pbk=node.pbk,
        sid=node.sid,
        flow=node.flow,
        path=node.path,
        host_header=node.host_header,
    )


def placeholder(label: str) -> Endpoint:
    """An entry that connects nowhere (``0.0.0.0:1``, the nil UUID) and says ``label``."""
    if not label or any(not ch.isprintable() for ch in label):
        raise ValueError(f"a placeholder needs a printable label, got {label!r}")
    return Endpoint(
        label=label, uuid=PLACEHOLDER_UUID, host=PLACEHOLDER_HOST, port=PLACEHOLDER_PORT, placeholder=True
    )


def unique_labels(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    """The entries with repeated labels numbered (``Amsterdam``, ``Amsterdam 2``), order kept."""
    seen: set[str] = set()
    out: list[Endpoint] = []
    for endpoint in endpoints:
        label, n = endpoint.label, 1
        while label in seen:
            n += 1
            label = f"{endpoint.label} {n}"
        seen.add(label)
        out.append(endpoint if label == endpoint.label else replace(endpoint, label=label))
    return tuple(out)
