"""The boundary to the outside world: the connection guard and the one outbound HTTP helper.

Every client that talks to another machine (VPN nodes, Crypto Pay, Telegram, anything over HTTP)
goes through :class:`OutboundHttp` or calls :func:`ensure_no_connection_held` itself, so that I/O
can never happen while a database connection is held (contract 1 in DESIGN.md).
"""

from atlas.net.guard import ConnectionHeldAcrossIO as ConnectionHeldAcrossIO
from atlas.net.guard import connection_held as connection_held
from atlas.net.guard import ensure_no_connection_held as ensure_no_connection_held
from atlas.net.guard import holding_connection as holding_connection
from atlas.net.http import OutboundError as OutboundError
from atlas.net.http import OutboundHttp as OutboundHttp
from atlas.net.http import OutboundTimeout as OutboundTimeout
from atlas.net.http import OutboundUnavailable as OutboundUnavailable
