"""Speaking to the core's API: hand-written protobuf messages and unary gRPC over HTTP/2 on trio."""

from atlas.vpn.wire.grpc import GrpcChannel as GrpcChannel
from atlas.vpn.wire.grpc import frame_message as frame_message
from atlas.vpn.wire.grpc import split_address as split_address
from atlas.vpn.wire.grpc import unframe_message as unframe_message
from atlas.vpn.wire.messages import AddUserOperation as AddUserOperation
from atlas.vpn.wire.messages import AlterInboundRequest as AlterInboundRequest
from atlas.vpn.wire.messages import ApiNames as ApiNames
from atlas.vpn.wire.messages import Flavour as Flavour
from atlas.vpn.wire.messages import QueryStatsRequest as QueryStatsRequest
from atlas.vpn.wire.messages import QueryStatsResponse as QueryStatsResponse
from atlas.vpn.wire.messages import RemoveUserOperation as RemoveUserOperation
from atlas.vpn.wire.messages import Stat as Stat
from atlas.vpn.wire.messages import TypedMessage as TypedMessage
from atlas.vpn.wire.messages import User as User
from atlas.vpn.wire.messages import VlessAccount as VlessAccount
