"""Promo codes: creating them (admin), remembering one a user typed (the TTL session), redeeming.

The rules are the domain's (:mod:`atlas.domain.promo`); this module reads and writes their state.

* The session: a user types a code before choosing what to buy. :func:`remember_promo` checks it
  (expired, exhausted, new-users-only, per-user limit) and keeps it for ``ttl``; a purchase or an
  invoice made without an explicit code uses the live session's code, and redeeming clears it. An
  expired session is ignored (and pruned by :func:`prune_promo_sessions`), so an abandoned code
  cannot be applied hours later (the predecessor's ``get_promo_session`` with TTL eviction).
* Redemption (:func:`redeem_promo`) happens in the purchase's transaction, with the promo row locked
  (after the user, subscription and payment rows): one ``promo_redemptions`` row per purchase
  (unique ``reference``) and ``uses + 1``.
* A code that ran out between an invoice and its payment: the user has paid the quoted price, so
  the payment still applies with the quote it was made with. The redemption is recorded (the
  per-user limit keeps counting it) but ``uses`` stays at ``max_uses`` (the table's CHECK): the cap
  can be overshot by at most the invoices that were open when it filled, and the redemptions table
  holds the true count.
* A refund keeps the redemption: the code was used.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TypeVar

from atlas.domain import (
    Currency,
    InvalidPromoDefinition,
    PromoCode,
    PromoKind,
    PromoNotApplicable,
    PromoNotFound,
    PromoPurpose,
    check_promo,
    normalise_code,
    validate_promo_definition,
)
from atlas.storage.tx import Record, Tx
from atlas.storage.units._rows import check_limit, check_now, check_user_id, lock_user, status_count
from atlas.storage.units.audit import check_reason, record_audit
from atlas.storage.units.plans import plan_codes

_PROMO_COLUMNS = (
    "code, kind, value, currency, cap_minor, max_uses, uses, per_user_limit, expires_at, "
    "new_users_only, applies_to, purpose"
)
MAX_SESSION_TTL = dt.timedelta(days=7)
Q = TypeVar("Q")


def promo_from_row(row: Record) -> PromoCode:
    """A promo_codes row as the domain's :class:`PromoCode`."""
    applies_to = row["applies_to"]
    return PromoCode(
        code=row["code"],
        kind=PromoKind(row["kind"]),
        value=row["value"],
        currency=None if row["currency"] is None else Currency(row["currency"]),
        cap_minor=row["cap_minor"],
        max_uses=row["max_uses"],
        uses_so_far=row["uses"],
        per_user_limit=row["per_user_limit"],
        expires_at=row["expires_at"],
        new_users_only=row["new_users_only"],
        applies_to=None if applies_to is None else frozenset(applies_to),
        purpose=PromoPurpose(row["purpose"]),
    )


async def load_promo(tx: Tx, code: str, *, lock: bool) -> PromoCode:
    """The code as typed (any case); :class:`~atlas.domain.PromoNotFound` (or its
    ``MalformedPromoCode``) if there is none. ``lock`` takes the row for a redemption."""
    normalised = normalise_code(code)
    promo = await find_promo(tx, normalised, lock=lock)
    if promo is None:
        raise PromoNotFound(normalised)
    return promo


async def find_promo(tx: Tx, code: str, *, lock: bool) -> PromoCode | None:
    """The stored code ``code`` (already normalised), or None; ``lock`` takes the row."""
    suffix = " FOR UPDATE" if lock else ""
    row = await tx.fetchrow(f"SELECT {_PROMO_COLUMNS} FROM promo_codes WHERE code = $1{suffix}", code)
    return None if row is None else promo_from_row(row)


async def user_promo_uses(tx: Tx, *, code: str, user_id: int) -> int:
    """How many times this user has redeemed this code."""
    value = await tx.fetchval(
        "SELECT count(*) FROM promo_redemptions WHERE code = $1 AND user_id = $2", code, user_id
    )
    return int(value)


async def resolve_promo(
    tx: Tx, *, user_id: int, promo_code: str | None, now: dt.datetime
) -> PromoCode | None:
    """The code a purchase uses, row locked: ``promo_code`` if given, else the live session's, else None."""
    code = promo_code
    if code is None:
        code = await tx.fetchval(
            "SELECT code FROM promo_sessions WHERE user_id = $1 AND expires_at > $2", user_id, now
        )
    if code is None:
        return None
    return await load_promo(tx, code, lock=True)


async def quote_with_promo(
    tx: Tx,
    *,
    user_id: int,
    promo_code: str | None,
    now: dt.datetime,
    quote: Callable[[PromoCode | None, int], Q],
) -> tuple[Q, PromoCode | None]:
    """Price a purchase with the promo it uses: ``quote(promo, this_user's_uses)``.

    An explicit ``promo_code`` that fails raises its :class:`~atlas.domain.PromoError`. A code from
    the session that does not fit this purchase (:class:`~atlas.domain.PromoNotApplicable`, e.g. a
    plan discount while topping up) is left in the session for the purchase it fits, and this one is
    quoted without it; any other failure of a session code raises, so the user learns that the code
    they chose no longer works (the bot offers :func:`clear_promo_session`).
    """
    promo = await resolve_promo(tx, user_id=user_id, promo_code=promo_code, now=now)
    if promo is None:
        return quote(None, 0), None
    uses = await user_promo_uses(tx, code=promo.code, user_id=user_id)
    try:
        return quote(promo, uses), promo
    except PromoNotApplicable:
        if promo_code is not None:
            raise
        return quote(None, 0), None


async def redeem_promo(
    tx: Tx,
    *,
    promo: PromoCode,
    user_id: int,
    payment_id: int | None,
    reference: str,
    now: dt.datetime,
) -> bool:
    """Record one use of ``promo`` (row locked by :func:`resolve_promo` or the caller) for a purchase.

    Idempotent on ``reference``: returns False when this purchase was already recorded. Clears the
    user's session for this code.
    """
    inserted = await tx.fetchval(
        """
        INSERT INTO promo_redemptions (code, user_id, payment_id, reference, created_at)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT DO NOTHING
        RETURNING id
        """,
        promo.code,
        user_id,
        payment_id,
        reference,
        now,
    )
    if inserted is None:
        return False
    await tx.execute(
        "UPDATE promo_codes SET uses = uses + 1 WHERE code = $1 AND (max_uses IS NULL OR uses < max_uses)",
        promo.code,
    )
    await tx.execute("DELETE FROM promo_sessions WHERE user_id = $1 AND code = $2", user_id, promo.code)
    return True


async def create_promo_code(
    tx: Tx, *, admin_id: int, promo: PromoCode, reason: str, now: dt.datetime
) -> PromoCode:
    """Create a code an admin defined, after the domain's checks (not expired, unused, known plans).

    Raises :class:`~atlas.domain.InvalidPromoDefinition` (``field="code"``, reason ``already exists``
    for a duplicate). Audited.
    """
    check_now(now)
    check_reason(reason)
    validate_promo_definition(promo, now=now, known_plans=await plan_codes(tx))
    created = await tx.fetchval(
        """
        INSERT INTO promo_codes (code, kind, value, currency, cap_minor, max_uses, uses, per_user_limit,
                                 expires_at, new_users_only, applies_to, purpose, created_by, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10, $11, $12, $13)
        ON CONFLICT (code) DO NOTHING
        RETURNING code
        """,
        promo.code,
        promo.kind.value,
        promo.value,
        None if promo.currency is None else promo.currency.code,
        promo.cap_minor,
        promo.max_uses,
        promo.per_user_limit,
        promo.expires_at,
        promo.new_users_only,
        None if promo.applies_to is None else sorted(promo.applies_to),
        promo.purpose.value,
        admin_id,
        now,
    )
    if created is None:
        raise InvalidPromoDefinition("code", promo.code, "already exists")
    await record_audit(
        tx,
        admin_id=admin_id,
        action="promo.create",
        target_user_id=None,
        details={"code": promo.code, "kind": promo.kind.value, "value": promo.value},
        reason=reason,
        now=now,
    )
    return promo


async def remember_promo(
    tx: Tx, *, user_id: int, code: str, ttl: dt.timedelta, now: dt.datetime
) -> PromoCode:
    """Check the code for this user and remember it for ``ttl`` (replacing an earlier one).

    Raises the domain's :class:`~atlas.domain.PromoError` (not found, expired, exhausted, new users
    only, per-user limit) and remembers nothing then. Whether it fits what they buy is decided at
    purchase time.
    """
    check_user_id(user_id)
    check_now(now)
    if not dt.timedelta(0) < ttl <= MAX_SESSION_TTL:
        raise ValueError(f"ttl must be in (0, {MAX_SESSION_TTL}], got {ttl}")
    user = await lock_user(tx, user_id)
    promo = await load_promo(tx, code, lock=False)
    check_promo(
        promo,
        user_uses=await user_promo_uses(tx, code=promo.code, user_id=user_id),
        user_is_new=user["first_paid_at"] is None,
        now=now,
    )
    await tx.execute(
        """
        INSERT INTO promo_sessions (user_id, code, expires_at) VALUES ($1, $2, $3)
        ON CONFLICT (user_id) DO UPDATE SET code = EXCLUDED.code, expires_at = EXCLUDED.expires_at
        """,
        user_id,
        promo.code,
        now + ttl,
    )
    return promo


async def promo_session_code(tx: Tx, *, user_id: int, now: dt.datetime) -> str | None:
    """The code the user typed, while its session is live."""
    check_user_id(user_id)
    value = await tx.fetchval(
        "SELECT code FROM promo_sessions WHERE user_id = $1 AND expires_at > $2", user_id, check_now(now)
    )
    return None if value is None else str(value)


async def clear_promo_session(tx: Tx, *, user_id: int) -> bool:
    """Forget the code the user typed; True if there was one."""
    check_user_id(user_id)
    return status_count(await tx.execute("DELETE FROM promo_sessions WHERE user_id = $1", user_id)) > 0


async def prune_promo_sessions(tx: Tx, *, now: dt.datetime, limit: int) -> int:
    """Delete at most ``limit`` expired sessions; return how many."""
    status = await tx.execute(
        """
        DELETE FROM promo_sessions WHERE user_id IN (
            SELECT user_id FROM promo_sessions WHERE expires_at <= $1 ORDER BY user_id LIMIT $2
        )
        """,
        check_now(now),
        check_limit(limit),
    )
    return status_count(status)


async def list_promo_codes(tx: Tx, *, after: str | None, limit: int) -> list[PromoCode]:
    """Promo codes in code order after ``after`` (keyset), at most ``limit`` (≤ 1000)."""
    rows = await tx.fetch(
        f"""
        SELECT {_PROMO_COLUMNS} FROM promo_codes WHERE ($1::text IS NULL OR code > $1)
        ORDER BY code LIMIT $2
        """,
        after,
        check_limit(limit, most=1000),
    )
    return [promo_from_row(row) for row in rows]
