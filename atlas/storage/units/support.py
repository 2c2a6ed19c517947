"""Units of work for support tickets: a user writes, an agent replies in the support chat, closes.

A ticket's life (``tickets.status``)::

    (user writes) ──▶ open ──agent /close──▶ closed
                       ▲  └─ every later user message joins it; agent replies go to the user
                       └── the next message after a close opens a new ticket

* :func:`add_user_message` stores a user's text in their open ticket (opening one when there is
  none) and enforces the per-user rate limit. The bot then sends the notice to the support chat
  itself (it needs the notice's message id) and records where it landed with
  :func:`record_support_copy`; an agent replies to that notice.
* :func:`add_agent_reply` finds the ticket from the message the agent replied to (the mapping
  ``(support_chat_id, support_message_id)``), stores the reply and writes the user's notice to
  the outbox in the same transaction (contract 2: the outbox is the only way a notice leaves).
  The agent's own message id is unique per chat, so a redelivered update stores and sends nothing.
* :func:`close_ticket` (``/close`` as a reply) or :func:`close_ticket_by_id` (the button under a
  notice) closes it, and tells the user, once, through the outbox.
* :func:`list_open_tickets` / :func:`ticket_with_messages`: the admin screens (keyset pages).

Refusals are :class:`SupportRefused` (code ``support.refused``, ``reason`` the locale key suffix
under ``support.refused``): ``empty``, ``too_long``, ``unstorable`` (a NUL or a lone surrogate,
which PostgreSQL cannot store), ``too_many`` (the rate limit), ``closed`` (a reply to a closed
ticket). Nothing changes then.

Lock order: the user's row, then the ticket (the package's order: users first).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from atlas.domain import DomainError
from atlas.storage.tx import Record, Tx
from atlas.storage.units._rows import check_limit, check_now, check_user_id, lock_user, unstorable_character
from atlas.storage.units.errors import UserBanned
from atlas.storage.units.outbox import enqueue_message

MAX_TEXT = 3500
"""A ticket message's longest text: Telegram's 4096 less room for the notice around it."""
MAX_NAME = 200
RATE_WINDOW = dt.timedelta(hours=1)
REPLY_KIND = "support.notice.reply"
"""Outbox kind (locale key) of an agent's reply as the user gets it: ``ticket``, ``message``."""
CLOSED_KIND = "support.notice.closed"
"""Outbox kind of "your ticket was closed": ``ticket``."""


class Refusal(enum.StrEnum):
    """Why a support request was refused (the locale key ``support.refused.<reason>``)."""

    EMPTY = "empty"
    TOO_LONG = "too_long"
    UNSTORABLE = "unstorable"
    TOO_MANY = "too_many"
    CLOSED = "closed"


class SupportRefused(DomainError):
    """A support message that cannot be taken; ``reason`` is a :class:`Refusal`."""

    code = "support.refused"

    def __init__(self, reason: Refusal, **params: int) -> None:
        super().__init__(f"support message refused: {reason.value}", reason=reason.value, **params)
        self.reason = reason


class Author(enum.StrEnum):
    """Who wrote a ticket message (``ticket_messages.author``)."""

    USER = "user"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class UserMessage:
    """What :func:`add_user_message` stored: the message, its ticket, and the user to introduce."""

    ticket_id: int
    message_id: int
    opened: bool
    """True when this message opened the ticket."""
    user_id: int
    first_name: str | None
    username: str | None
    language: str


@dataclass(frozen=True, slots=True)
class AgentReply:
    """What :func:`add_agent_reply` did: the ticket, its user, and whether it was new."""

    ticket_id: int
    user_id: int
    stored: bool
    """False for a redelivered update: the reply was stored (and sent) before."""


@dataclass(frozen=True, slots=True)
class ClosedTicket:
    """What :func:`close_ticket` did."""

    ticket_id: int
    user_id: int
    already_closed: bool


@dataclass(frozen=True, slots=True)
class TicketSummary:
    """One line of the admin list of open tickets."""

    id: int
    user_id: int
    first_name: str | None
    username: str | None
    messages: int
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TicketMessage:
    """One stored message of a ticket."""

    author: Author
    author_id: int
    author_name: str
    text: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TicketView:
    """A ticket with its latest messages (oldest first); ``earlier`` counts the ones left out."""

    summary: TicketSummary
    status: str
    messages: tuple[TicketMessage, ...]
    earlier: int


def check_text(text: str) -> str:
    """The text as it will be stored; :class:`SupportRefused` when it cannot be."""
    if not isinstance(text, str) or not text.strip():
        raise SupportRefused(Refusal.EMPTY)
    if len(text) > MAX_TEXT:
        raise SupportRefused(Refusal.TOO_LONG, limit=MAX_TEXT)
    if unstorable_character(text) is not None:
        raise SupportRefused(Refusal.UNSTORABLE)
    return text


def _name(name: str) -> str:
    # Display names come from Telegram (≤ 64 chars each today); clip rather than refuse a reply.
    clean = "".join(ch for ch in name if ch != "\x00" and not "\ud800" <= ch <= "\udfff")
    return clean[:MAX_NAME]


async def add_user_message(
    tx: Tx, *, user_id: int, text: str, now: dt.datetime, per_hour: int | None
) -> UserMessage:
    """Store ``text`` from ``user_id`` in their open ticket (opened if none); see the module docstring.

    Raises :class:`SupportRefused` (bad text; ``too_many`` when the user already wrote
    ``per_hour`` messages within the hour before ``now``; None: no limit) or
    :class:`~atlas.storage.units.errors.UserBanned`; nothing is stored then. The user's row is
    locked first, so two messages of one user cannot both squeeze under the limit or open two
    tickets.
    """
    check_user_id(user_id)
    check_now(now)
    check_text(text)
    if per_hour is not None and (isinstance(per_hour, bool) or per_hour < 1):
        raise ValueError(f"per_hour must be a positive int or None, got {per_hour!r}")
    user = await lock_user(tx, user_id)
    if user["banned_at"] is not None:
        raise UserBanned(user_id)
    if per_hour is not None:
        recent = await tx.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM ticket_messages WHERE author = 'user' "
            "AND author_id = $1 AND created_at > $2 LIMIT $3) AS recent",
            user_id,
            now - RATE_WINDOW,
            per_hour,
        )
        if recent >= per_hour:
            raise SupportRefused(Refusal.TOO_MANY, limit=per_hour)
    ticket_id = await tx.fetchval(
        "UPDATE tickets SET updated_at = $2 WHERE user_id = $1 AND status = 'open' RETURNING id",
        user_id,
        now,
    )
    opened = ticket_id is None
    if opened:
        ticket_id = await tx.fetchval(
            "INSERT INTO tickets (user_id, created_at, updated_at) VALUES ($1, $2, $2) RETURNING id",
            user_id,
            now,
        )
    message_id = await tx.fetchval(
        "INSERT INTO ticket_messages (ticket_id, author, author_id, author_name, text, created_at) "
        "VALUES ($1, 'user', $2, $3, $4, $5) RETURNING id",
        ticket_id,
        user_id,
        _name(user["first_name"] or ""),
        text,
        now,
    )
    return UserMessage(
        ticket_id=ticket_id,
        message_id=message_id,
        opened=opened,
        user_id=user_id,
        first_name=user["first_name"],
        username=user["username"],
        language=user["language"],
    )


async def record_support_copy(
    tx: Tx, *, message_id: int, support_chat_id: int, support_message_id: int
) -> None:
    """Remember that the stored message ``message_id`` is ``support_message_id`` in the support chat."""
    await tx.execute(
        "UPDATE ticket_messages SET support_chat_id = $2, support_message_id = $3 WHERE id = $1",
        message_id,
        support_chat_id,
        support_message_id,
    )


async def _ticket_replied_to(tx: Tx, support_chat_id: int, reply_to_message_id: int) -> Record | None:
    # The ticket whose message (a notice or an earlier reply) the agent answered; locked, so a
    # reply and a close of one ticket are serialised.
    return await tx.fetchrow(
        """
        SELECT t.id, t.user_id, t.status FROM ticket_messages AS m JOIN tickets AS t ON t.id = m.ticket_id
        WHERE m.support_chat_id = $1 AND m.support_message_id = $2
        FOR UPDATE OF t
        """,
        support_chat_id,
        reply_to_message_id,
    )


async def add_agent_reply(
    tx: Tx,
    *,
    support_chat_id: int,
    reply_to_message_id: int,
    agent_message_id: int,
    agent_id: int,
    agent_name: str,
    text: str,
    now: dt.datetime,
) -> AgentReply | None:
    """Store an agent's reply and queue it for the ticket's user; None if the replied-to message
    belongs to no ticket (agents talking among themselves).

    The caller must only pass messages from the configured support chat: that is the whole
    authority of an agent. Raises :class:`SupportRefused` (bad text, or ``closed``).
    """
    check_now(now)
    found = await _ticket_replied_to(tx, support_chat_id, reply_to_message_id)
    if found is None:
        return None
    check_text(text)
    if found["status"] != "open":
        raise SupportRefused(Refusal.CLOSED, ticket=found["id"])
    stored = await tx.fetchval(
        """
        INSERT INTO ticket_messages (ticket_id, author, author_id, author_name, text, created_at,
                                     support_chat_id, support_message_id)
        VALUES ($1, 'agent', $2, $3, $4, $5, $6, $7)
        ON CONFLICT (support_chat_id, support_message_id) WHERE support_chat_id IS NOT NULL DO NOTHING
        RETURNING id
        """,
        found["id"],
        agent_id,
        _name(agent_name),
        text,
        now,
        support_chat_id,
        agent_message_id,
    )
    if stored is not None:
        await tx.execute("UPDATE tickets SET updated_at = $2 WHERE id = $1", found["id"], now)
        await enqueue_message(
            tx,
            chat_id=found["user_id"],
            kind=REPLY_KIND,
            # "message", not "text": a payload with a "text" key is sent literally (no template).
            payload={"ticket": found["id"], "message": text},
            dedupe_key=f"support-reply:{support_chat_id}:{agent_message_id}",
            now=now,
        )
    return AgentReply(ticket_id=found["id"], user_id=found["user_id"], stored=stored is not None)


async def close_ticket(
    tx: Tx, *, support_chat_id: int, reply_to_message_id: int, agent_id: int, now: dt.datetime
) -> ClosedTicket | None:
    """Close the ticket of the replied-to message and tell its user (once); None: no such ticket."""
    check_now(now)
    found = await _ticket_replied_to(tx, support_chat_id, reply_to_message_id)
    return None if found is None else await _close(tx, found, agent_id, now)


async def close_ticket_by_id(
    tx: Tx, *, ticket_id: int, agent_id: int, now: dt.datetime
) -> ClosedTicket | None:
    """Close ticket ``ticket_id`` (the button under a notice) and tell its user; None: no such ticket.

    The caller must only pass presses on a message of the support chat.
    """
    check_now(now)
    found = await tx.fetchrow("SELECT id, user_id, status FROM tickets WHERE id = $1 FOR UPDATE", ticket_id)
    return None if found is None else await _close(tx, found, agent_id, now)


async def _close(tx: Tx, found: Record, agent_id: int, now: dt.datetime) -> ClosedTicket:
    if found["status"] != "open":
        return ClosedTicket(ticket_id=found["id"], user_id=found["user_id"], already_closed=True)
    await tx.execute(
        "UPDATE tickets SET status = 'closed', closed_at = $2, closed_by = $3, updated_at = $2 WHERE id = $1",
        found["id"],
        now,
        agent_id,
    )
    await enqueue_message(
        tx,
        chat_id=found["user_id"],
        kind=CLOSED_KIND,
        payload={"ticket": found["id"]},
        dedupe_key=f"support-closed:{found['id']}",
        now=now,
    )
    return ClosedTicket(ticket_id=found["id"], user_id=found["user_id"], already_closed=False)


_SUMMARY = """
    SELECT t.id, t.user_id, t.status, t.created_at, t.updated_at, u.first_name, u.username,
           (SELECT count(*) FROM ticket_messages AS m WHERE m.ticket_id = t.id) AS messages
    FROM tickets AS t JOIN users AS u ON u.id = t.user_id
"""


def _summary(row: Record) -> TicketSummary:
    return TicketSummary(
        id=row["id"],
        user_id=row["user_id"],
        first_name=row["first_name"],
        username=row["username"],
        messages=row["messages"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def list_open_tickets(tx: Tx, *, before: int | None, limit: int) -> list[TicketSummary]:
    """Open tickets, newest first, with an id below ``before`` (None: from the newest)."""
    check_limit(limit, most=100)
    rows = await tx.fetch(
        _SUMMARY
        + " WHERE t.status = 'open' AND ($1::bigint IS NULL OR t.id < $1) ORDER BY t.id DESC LIMIT $2",
        before,
        limit,
    )
    return [_summary(row) for row in rows]


async def ticket_with_messages(tx: Tx, *, ticket_id: int, limit: int) -> TicketView | None:
    """The ticket ``ticket_id`` (open or closed) with its latest ``limit`` messages; None if unknown."""
    check_limit(limit, most=100)
    row = await tx.fetchrow(_SUMMARY + " WHERE t.id = $1", ticket_id)
    if row is None:
        return None
    rows = await tx.fetch(
        "SELECT author, author_id, author_name, text, created_at FROM ticket_messages "
        "WHERE ticket_id = $1 ORDER BY id DESC LIMIT $2",
        ticket_id,
        limit,
    )
    messages = tuple(
        TicketMessage(
            author=Author(r["author"]),
            author_id=r["author_id"],
            author_name=r["author_name"],
            text=r["text"],
            created_at=r["created_at"],
        )
        for r in reversed(rows)
    )
    summary = _summary(row)
    return TicketView(
        summary=summary, status=row["status"], messages=messages, earlier=summary.messages - len(messages)
    )
