"""VPN keys: units change only ``vpn_keys.desired``; the VPN controller converges the nodes.

A subscription has at most one key wanted present (a partial unique index enforces it). Every change
of ``desired`` bumps ``generation`` so the controller can tell a new intent from one it has applied.

* Access starts or comes back (purchase, reactivation, unban): :func:`ensure_present_key` keeps the
  present key, or makes the subscription's newest key present again, or creates one. Reviving the
  newest key means a lapsed user's configured client works again after they pay; it is safe because
  the only security revocation, a reissue, always leaves a newer key behind.
* Access ends (expiry, ban, refund, days removed): :func:`revoke_keys`.
* :func:`reissue_key`: the old key absent and a new one present, in one transaction (the
  predecessor's ``reissue_vpn_key_atomic``).
"""

from __future__ import annotations

import datetime as dt
import uuid

from atlas.storage.tx import Tx
from atlas.storage.units._rows import (
    check_now,
    check_user_id,
    lock_subscription,
    lock_user,
    subscription_state,
)
from atlas.storage.units.errors import NoSubscription, UserBanned
from atlas.storage.units.outbox import enqueue_message
from atlas.storage.units.records import KeyReissue


async def present_key(tx: Tx, subscription_id: int) -> uuid.UUID | None:
    """The key wanted present for this subscription, if any."""
    value = await tx.fetchval(
        "SELECT uuid FROM vpn_keys WHERE subscription_id = $1 AND desired = 'present'", subscription_id
    )
    return None if value is None else uuid.UUID(str(value))


async def _insert_key(tx: Tx, subscription_id: int, now: dt.datetime) -> uuid.UUID:
    key = uuid.uuid4()
    await tx.execute(
        """
        INSERT INTO vpn_keys (subscription_id, uuid, desired, created_at, changed_at)
        VALUES ($1, $2, 'present', $3, $3)
        """,
        subscription_id,
        key,
        now,
    )
    return key


async def ensure_present_key(tx: Tx, *, subscription_id: int, now: dt.datetime) -> uuid.UUID:
    """Make sure the subscription (locked by the caller) has a key wanted present; return it."""
    current = await present_key(tx, subscription_id)
    if current is not None:
        return current
    revived = await tx.fetchval(
        """
        UPDATE vpn_keys SET desired = 'present', generation = generation + 1, changed_at = $2
        WHERE id = (SELECT id FROM vpn_keys WHERE subscription_id = $1 ORDER BY id DESC LIMIT 1)
        RETURNING uuid
        """,
        subscription_id,
        now,
    )
    if revived is not None:
        return uuid.UUID(str(revived))
    return await _insert_key(tx, subscription_id, now)


async def revoke_keys(tx: Tx, *, subscription_id: int, now: dt.datetime) -> uuid.UUID | None:
    """Want the subscription's present key absent; return it (None if none was present)."""
    value = await tx.fetchval(
        """
        UPDATE vpn_keys SET desired = 'absent', generation = generation + 1, changed_at = $2
        WHERE subscription_id = $1 AND desired = 'present'
        RETURNING uuid
        """,
        subscription_id,
        now,
    )
    return None if value is None else uuid.UUID(str(value))


async def reissue_key(tx: Tx, *, user_id: int, now: dt.datetime) -> KeyReissue:
    """Replace the user's key: the old one wanted absent, a new one present, atomically.

    Raises :class:`NoSubscription` unless the subscription is active at ``now``,
    :class:`UserBanned` for a banned user. The user is told through the outbox.
    """
    check_user_id(user_id)
    check_now(now)
    user = await lock_user(tx, user_id)
    if user["banned_at"] is not None:
        raise UserBanned(user_id)
    sub = await lock_subscription(tx, user_id)
    state = subscription_state(sub)
    if sub is None or state is None or not state.is_active_at(now):
        raise NoSubscription(user_id)
    old = await revoke_keys(tx, subscription_id=sub["id"], now=now)
    new = await _insert_key(tx, sub["id"], now)
    await enqueue_message(
        tx,
        chat_id=user_id,
        kind="key.reissued",
        payload={"expires_at": sub["expires_at"]},
        dedupe_key=f"key-reissued:{new}",
        now=now,
    )
    return KeyReissue(subscription_id=sub["id"], old_uuid=old, new_uuid=new)
