"""Actors: the base class (mailbox, ticks, heartbeat) and one module per worker.

Only the base is exported here; workers are imported from their own modules by the app tree.
"""

from atlas.actors.base import Actor as Actor
from atlas.actors.base import ActorCrashed as ActorCrashed
from atlas.actors.base import ActorError as ActorError
from atlas.actors.base import CallTimeout as CallTimeout
from atlas.actors.base import InvalidActorSpec as InvalidActorSpec
from atlas.actors.base import MailboxFull as MailboxFull
from atlas.actors.base import MailboxStatistics as MailboxStatistics

__all__ = [
    "Actor",
    "ActorCrashed",
    "ActorError",
    "CallTimeout",
    "InvalidActorSpec",
    "MailboxFull",
    "MailboxStatistics",
]
