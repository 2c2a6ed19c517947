"""The batch wire format of the node agent: many user changes in one request, one result each.

::

    POST /v1/users:batch
      {"ops": [{"op": "put", "email": e, "uuid": u, "flow": "", "level": 0},
               {"op": "delete", "email": e}, ...]}                    (1..MAX_BATCH_OPS ops)
    -> 200 {"results": [{"ok": true, "changed": bool}
                        | {"ok": false, "status": 400|500|502, "error": "..."}, ...]}

``results[i]`` answers ``ops[i]``. A bad op (unknown kind, a malformed field, an email already
used by an earlier op of the same batch) gets its own ``400`` result and the rest of the batch is
applied: one bad op does not fail the batch. Per-op ``status`` means what the single-user routes'
HTTP status means (400 our input, 502 the core, 500 the config file). The whole request answers
400 only when the envelope itself is wrong (not an object, no ``ops`` list, empty, more than
:data:`MAX_BATCH_OPS` ops, over :data:`MAX_BATCH_BODY_BYTES`), and 401 without the token.

Why one request per batch: every request costs both ends about the same CPU whatever it carries
(HTTP parsing, routing, JSON, TLS), and the agent writes the core's config file once per batch
instead of once per user (a full rewrite that grows with the user count). See
``docs/architecture.md`` ("Batches to the node agent").

This module is the shared vocabulary: :class:`UserOp` (what the bot sends), :func:`read_ops`
(the agent's and the emulator's structural parse of the envelope) and :class:`OpResult` (one
answer). Field checks beyond types (email charset, UUID form, flows) are the receiver's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

OpKind = Literal["put", "delete"]

MAX_BATCH_OPS: Final = 1000
# A put op is about 120 bytes of JSON; 1000 of them with room for long flows and emails.
MAX_BATCH_BODY_BYTES: Final = 256 * 1024


class BadBatch(ValueError):
    """The batch envelope is malformed (the whole request is refused with 400)."""


@dataclass(frozen=True, slots=True)
class UserOp:
    """One change in a batch: make ``email`` present with ``uuid``/``flow``/``level``, or absent."""

    kind: OpKind
    email: str
    uuid: str = ""
    flow: str = ""
    level: int = 0

    @classmethod
    def put(cls, email: str, uuid: str, flow: str = "", level: int = 0) -> UserOp:
        """A put op (idempotent: an unchanged user answers ``changed: false``)."""
        return cls("put", email, uuid, flow, level)

    @classmethod
    def delete(cls, email: str) -> UserOp:
        """A delete op (idempotent: an absent user answers ``changed: false``)."""
        return cls("delete", email)

    def to_json(self) -> dict[str, Any]:
        """The op's JSON object on the wire."""
        if self.kind == "delete":
            return {"op": "delete", "email": self.email}
        return {"op": "put", "email": self.email, "uuid": self.uuid, "flow": self.flow, "level": self.level}


@dataclass(frozen=True, slots=True)
class OpResult:
    """The answer to one op: ``ok`` with ``changed``, or a failure with ``status`` and ``error``."""

    ok: bool
    changed: bool = False
    status: int = 200
    error: str = ""

    @classmethod
    def done(cls, changed: bool) -> OpResult:
        """The op was applied (``changed``: whether anything had to change)."""
        return cls(True, changed)

    @classmethod
    def failed(cls, status: int, error: str) -> OpResult:
        """The op was not (fully) applied; ``status`` as the single-user route would answer."""
        return cls(False, False, status, error)

    def to_json(self) -> dict[str, Any]:
        """The result's JSON object on the wire."""
        if self.ok:
            return {"ok": True, "changed": self.changed}
        return {"ok": False, "status": self.status, "error": self.error}


def read_ops(body: Any) -> list[UserOp | str]:
    """Parse a batch envelope into ops; an op that is malformed becomes its error text instead.

    Raises :class:`BadBatch` when the envelope itself is wrong. Types only: the caller checks
    the values (and repeated emails, which depend on how it compares them).
    """
    if not isinstance(body, dict):
        raise BadBatch("body: must be a JSON object")
    ops = body.get("ops")
    if not isinstance(ops, list):
        raise BadBatch("ops: must be a list")
    if not 1 <= len(ops) <= MAX_BATCH_OPS:
        raise BadBatch(f"ops: must hold 1..{MAX_BATCH_OPS} ops, got {len(ops)}")
    return [_read_op(index, raw) for index, raw in enumerate(ops)]


def _read_op(index: int, raw: Any) -> UserOp | str:
    where = f"ops[{index}]"
    if not isinstance(raw, dict):
        return f"{where}: must be an object"
    kind, email = raw.get("op"), raw.get("email")
    if kind not in ("put", "delete"):
        return f"{where}.op: must be 'put' or 'delete', got {kind!r:.40}"
    if not isinstance(email, str):
        return f"{where}.email: must be a string"
    if kind == "delete":
        return UserOp.delete(email)
    uuid, flow, level = raw.get("uuid"), raw.get("flow", ""), raw.get("level", 0)
    if not isinstance(uuid, str):
        return f"{where}.uuid: missing or not a string"
    if not isinstance(flow, str):
        return f"{where}.flow: must be a string"
    if isinstance(level, bool) or not isinstance(level, int):
        return f"{where}.level: must be an integer"
    return UserOp.put(email, uuid, flow, level)
