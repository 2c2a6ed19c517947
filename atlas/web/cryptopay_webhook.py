"""``POST <path>``: the Crypto Pay webhook, answered so that the provider's retries do the right thing.

Crypto Pay retries any non-2xx answer for up to three days (17 attempts). So the answer says
whether *retrying could help*:

=================================================  ======  =======================================
request                                            answer  why
=================================================  ======  =======================================
body over ``max_body_bytes``                       413     not something Crypto Pay sends
signature missing or wrong (forged, another app's  401     not from Crypto Pay; nothing read,
token, body altered after signing)                         nothing changed, a warning line
signed, but not an ``invoice_paid`` we can use     200     kept for an operator
(a new ``update_type``, a value the strict parser          (``provider_messages_kept``, once per
refuses)                                                   distinct body) and an error line naming
                                                           the field. Not 400: the provider would
                                                           retry the same bytes 17 times and then
                                                           switch the webhook off for everyone
... and it cannot be kept (database down)          503     the provider retries later
valid, applied now                                 200
valid, already applied (duplicate, watcher won)    200     nothing changed
valid, no payment of ours (unknown invoice)        200     a warning line. Not 404: the intent is
                                                           written *before* the invoice exists and
                                                           found by invoice id or by payload, so an
                                                           unknown invoice stays unknown; 17
                                                           retries over three days would only
                                                           repeat the warning
valid, amount or currency differ from the intent   200     the intent is flagged (an admin
                                                           decides), an error line; retrying
                                                           cannot change the verdict
the payment cannot be recorded (budget exhausted,  503     nothing recorded; the provider retries
database down, conflicts, the unit timed out)              and the watcher also picks it up
=================================================  ======  =======================================

The body is read raw (the signature covers the exact bytes) with a size cap enforced while
reading, so a huge or endless body costs at most ``max_body_bytes`` of memory. Log lines carry ids,
amounts, the peer address and the reason: never the token, the signature or the body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from atlas.clock import Clock
from atlas.domain import ReferralPolicy
from atlas.payments.apply_flow import PROVIDER, apply_paid_invoice
from atlas.payments.cryptopay_webhook import WebhookMalformed, WebhookSignatureInvalid, parse_webhook
from atlas.storage import BudgetExhausted, Database, DatabaseUnavailable, TransactionConflict
from atlas.storage.units.provider_records import keep_provider_message

_log = logging.getLogger("atlas.web.cryptopay_webhook")

DEFAULT_MAX_BODY_BYTES = 64 * 1024
"""An invoice_paid update is about 2 KB; payload (4 KB), description and hidden message bound it."""

_UNRECORDABLE = (BudgetExhausted, DatabaseUnavailable, TransactionConflict, trio.TooSlowError)


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def cryptopay_webhook_route(
    path: str,
    *,
    token: str,
    db_provider: Callable[[], Database],
    clock: Clock,
    referral_policy: ReferralPolicy,
    balance_currency: str,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Route:
    """The webhook route at ``path`` for the Crypto Pay app whose API token is ``token``.

    ``path`` should carry a secret segment of its own (``/webhooks/cryptopay/<secret>``) when the
    deployment wants one; the signature is checked regardless. Bad arguments raise ``ValueError``
    here, at assembly. See the module docstring for every answer.
    """
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    if not isinstance(token, str) or not token:
        raise ValueError("token must be a non-empty string")
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
        raise ValueError(f"max_body_bytes must be an integer >= 1024, got {max_body_bytes!r}")

    async def webhook(request: Request) -> Response:
        peer = request.client.host if request.client is not None else "?"
        try:
            raw = await _read_body(request, max_body_bytes)
        except _BodyTooLarge:
            _log.warning("cryptopay webhook from %s refused: body over %d bytes", peer, max_body_bytes)
            return PlainTextResponse("body too large\n", status_code=413)
        except ClientDisconnect:
            return PlainTextResponse("disconnected\n", status_code=400)
        try:
            update = parse_webhook(token, raw, request.headers)
        except WebhookSignatureInvalid as exc:
            _log.warning(
                "cryptopay webhook from %s refused (401): %s; %d bytes, nothing applied", peer, exc, len(raw)
            )
            return PlainTextResponse("bad signature\n", status_code=401)
        except WebhookMalformed as exc:
            return await _keep(raw, str(exc), peer)
        try:
            await apply_paid_invoice(
                db_provider(),
                update.invoice,
                source=f"webhook update {update.update_id}",
                referral_policy=referral_policy,
                balance_currency=balance_currency,
                clock=clock,
            )
        except _UNRECORDABLE as exc:
            _log.error(
                "cryptopay webhook for invoice %d not recorded (503, the provider will retry): %s: %s",
                update.invoice.invoice_id,
                exc.__class__.__name__,
                exc,
            )
            return PlainTextResponse("try again later\n", status_code=503, headers={"retry-after": "30"})
        return PlainTextResponse("ok\n")

    async def _keep(raw: bytes, reason: str, peer: str) -> Response:
        try:
            new = await db_provider().run(
                keep_provider_message,
                provider=PROVIDER,
                source="webhook",
                body=raw,
                reason=reason,
                now=clock.now(),
            )
        except _UNRECORDABLE as exc:
            _log.error(
                "cryptopay webhook from %s: signed but unusable (%s) and not kept (503, the provider "
                "will retry): %s",
                peer,
                reason,
                exc.__class__.__name__,
            )
            return PlainTextResponse("try again later\n", status_code=503, headers={"retry-after": "30"})
        _log.error(
            "cryptopay webhook from %s: signed but unusable, answered 200 and %s for an operator: %s",
            peer,
            "kept" if new else "already kept",
            reason,
        )
        return PlainTextResponse("kept\n")

    return Route(path, webhook, methods=["POST"], name="cryptopay_webhook")
