"""Errors the units of work raise themselves, on top of the domain's (:mod:`atlas.domain.errors`).

They are :class:`~atlas.domain.DomainError` subclasses, so the bot handles them like every refusal
of a rule: a stable ``code`` (its i18n key) and ``params``, never ``str(exc)`` shown to a user.
Raising one inside a unit rolls the whole transaction back: nothing is changed::

    DomainError
    └── UnitError
        ├── UnknownUser            user.unknown          user_id       (not registered)
        ├── UserBanned             user.banned           user_id
        ├── NoSubscription         subscription.none     user_id
        ├── PaymentNotFound        payment.not_found     payment
        ├── PaymentConflict        payment.conflict      payment, reason
        ├── NothingToPay           payment.nothing_to_pay   plan  (a 100% code: buy from balance)
        ├── TooManyInvoices        payment.too_many      limit  (invoices opened within the hour)
        ├── RefundRefused          refund.refused        payment, reason
        └── InvalidAdminInput      admin.invalid_input   field, value, reason

:class:`SnapshotMoved` is not a refusal but a retry: ``db.run`` runs the unit again.
"""

from __future__ import annotations

import asyncpg

from atlas.domain import DomainError


class UnitError(DomainError):
    """Base of the refusals that come from stored state rather than from a pure rule."""

    code = "unit.error"


class UnknownUser(UnitError):
    """No user with this id has been registered (``/start`` never ran for them)."""

    code = "user.unknown"

    def __init__(self, user_id: int) -> None:
        super().__init__(f"no user {user_id}", user_id=user_id)


class UserBanned(UnitError):
    """An admin banned this user; they can neither buy nor start a trial."""

    code = "user.banned"

    def __init__(self, user_id: int) -> None:
        super().__init__(f"user {user_id} is banned", user_id=user_id)


class NoSubscription(UnitError):
    """The action needs a subscription (reissue a key, take days away) and the user has none."""

    code = "subscription.none"

    def __init__(self, user_id: int) -> None:
        super().__init__(f"user {user_id} has no subscription", user_id=user_id)


class PaymentNotFound(UnitError):
    """No payment with this id (or payload)."""

    code = "payment.not_found"

    def __init__(self, payment: str | int) -> None:
        super().__init__(f"no payment {payment!r}", payment=str(payment))


class PaymentConflict(UnitError):
    """A payment already carries another external id (``reason="external_id"``)."""

    code = "payment.conflict"

    def __init__(self, payment: int, reason: str) -> None:
        super().__init__(f"payment {payment}: {reason}", payment=payment, reason=reason)
        self.reason = reason


class NothingToPay(UnitError):
    """The quote is free (a 100% code): there is no invoice to create; buy from balance instead,
    which grants a free quote without charging."""

    code = "payment.nothing_to_pay"

    def __init__(self, plan: str) -> None:
        super().__init__(f"plan {plan!r} costs nothing with this code", plan=plan)


class TooManyInvoices(UnitError):
    """The user opened ``limit`` invoices within the last hour; a new one is refused for now."""

    code = "payment.too_many"

    def __init__(self, user_id: int, limit: int) -> None:
        super().__init__(f"user {user_id} opened {limit} invoices within an hour", limit=limit)
        self.limit = limit


class RefundRefused(UnitError):
    """A refund that cannot be done exactly.

    ``reason``: ``not_applied`` (pending, expired, flagged or already refunded) or
    ``balance_short`` (the credited money has been spent; nothing is changed).
    """

    code = "refund.refused"

    def __init__(self, payment: int, reason: str) -> None:
        super().__init__(f"payment {payment} cannot be refunded: {reason}", payment=payment, reason=reason)
        self.reason = reason


class InvalidAdminInput(UnitError):
    """An admin command with a value that makes no sense (an empty reason, zero days)."""

    code = "admin.invalid_input"

    def __init__(self, field: str, value: object, reason: str) -> None:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        super().__init__(f"{field}={shown}: {reason}", field=field, value=shown, reason=reason)
        self.field = field
        self.reason = reason


class SnapshotMoved(asyncpg.SerializationError):  # type: ignore[misc]  # asyncpg is untyped
    """A unit decided on a snapshot that a transaction committed during its lock wait made stale.

    Not a refusal: it is PostgreSQL's own serialization failure (SQLSTATE 40001, what REPEATABLE
    READ would raise here), so ``db.run`` rolls the transaction back and runs the unit again on a
    fresh snapshot. Raised when a row the unit must lock (a referrer set meanwhile) or must not
    create twice (a subscription created meanwhile) was invisible to its locking statement.
    """
