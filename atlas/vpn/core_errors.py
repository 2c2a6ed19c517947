"""Errors of the Xray/V2Ray core driver, named by cause.

::

    CoreError                     the core could not do what was asked
    ├── CoreUnavailable           could not connect, the connection broke, or no answer in time
    ├── CoreProtocolError         the answer was not valid HTTP/2, gRPC or protobuf (garbage)
    └── CoreRejected              the core answered with a non-zero grpc-status
        ├── CoreUserExists        AddUser: a user with this email is already on the inbound
        ├── CoreUserNotFound      RemoveUser: no user with this email on the inbound
        └── CoreInboundNotFound   no inbound with the configured tag

``CoreUnavailable`` is the only one worth retrying later as it stands; ``CoreProtocolError`` means
the address points at something that is not the core's API (or a core we do not understand);
``CoreRejected`` subclasses are answers, and callers that want idempotency catch them by name.
:class:`atlas.net.ConnectionHeldAcrossIO` is deliberately not a ``CoreError``: it is a programming
error, never a core failure.
"""

from __future__ import annotations


class CoreError(Exception):
    """The core could not do what was asked."""


class CoreUnavailable(CoreError):
    """Could not connect to the core's API, the connection broke, or no answer within the timeout."""


class CoreProtocolError(CoreError):
    """The core's answer was not valid HTTP/2, gRPC framing or protobuf."""


class CoreRejected(CoreError):
    """The core answered the call with a non-zero gRPC status.

    ``status`` is the numeric grpc-status, ``detail`` the decoded grpc-message.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"grpc-status {status}: {detail}")
        self.status = status
        self.detail = detail


class CoreUserExists(CoreRejected):
    """AddUser refused: a user with this email already exists on the inbound."""


class CoreUserNotFound(CoreRejected):
    """RemoveUser refused: no user with this email on the inbound."""


class CoreInboundNotFound(CoreRejected):
    """The core has no inbound handler with the requested tag."""
