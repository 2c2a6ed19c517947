"""VPN: node client, circuit breaker, the Xray/V2Ray core driver, the node agent, links, subscriptions.

Bot side (runs in the Atlas process): :class:`Fleet` / :class:`NodeClient` talk to each node's agent
over HTTP, each behind a :class:`CircuitBreaker` and a concurrency limit; :func:`vless_link` builds
the share links users import, and :mod:`atlas.vpn.formats` the subscription in each client's format
(base64 links, Clash/Mihomo YAML, sing-box JSON, Xray JSON) from :class:`Endpoint` entries.
Node side (``atlas node``): :func:`run_agent` serves the agent API and drives the local core
through :class:`CoreDriver` (gRPC), keeping the core's config file in step (:class:`CoreConfigFile`).
"""

from atlas.vpn.agent import build_agent_app as build_agent_app
from atlas.vpn.agent import run_agent as run_agent
from atlas.vpn.agent_settings import NodeAgentSettings as NodeAgentSettings
from atlas.vpn.breaker import BreakerState as BreakerState
from atlas.vpn.breaker import BreakerStatistics as BreakerStatistics
from atlas.vpn.breaker import CircuitBreaker as CircuitBreaker
from atlas.vpn.breaker import CircuitOpen as CircuitOpen
from atlas.vpn.core import CoreDriver as CoreDriver
from atlas.vpn.core_config import CoreConfigError as CoreConfigError
from atlas.vpn.core_config import CoreConfigFile as CoreConfigFile
from atlas.vpn.core_config import render_client_config as render_client_config
from atlas.vpn.core_config import render_server_config as render_server_config
from atlas.vpn.core_errors import CoreError as CoreError
from atlas.vpn.core_errors import CoreInboundNotFound as CoreInboundNotFound
from atlas.vpn.core_errors import CoreProtocolError as CoreProtocolError
from atlas.vpn.core_errors import CoreRejected as CoreRejected
from atlas.vpn.core_errors import CoreUnavailable as CoreUnavailable
from atlas.vpn.core_errors import CoreUserExists as CoreUserExists
from atlas.vpn.core_errors import CoreUserNotFound as CoreUserNotFound
from atlas.vpn.core_process import ManagedCore as ManagedCore
from atlas.vpn.endpoint import Endpoint as Endpoint
from atlas.vpn.endpoint import endpoint_for as endpoint_for
from atlas.vpn.endpoint import placeholder as placeholder
from atlas.vpn.links import VlessLink as VlessLink
from atlas.vpn.links import parse_vless_link as parse_vless_link
from atlas.vpn.links import share_link as share_link
from atlas.vpn.links import vless_link as vless_link
from atlas.vpn.node_client import Fleet as Fleet
from atlas.vpn.node_client import NodeAuthFailed as NodeAuthFailed
from atlas.vpn.node_client import NodeCircuitOpen as NodeCircuitOpen
from atlas.vpn.node_client import NodeClient as NodeClient
from atlas.vpn.node_client import NodeError as NodeError
from atlas.vpn.node_client import NodeProtocolError as NodeProtocolError
from atlas.vpn.node_client import NodeRejected as NodeRejected
from atlas.vpn.node_client import NodeUnavailable as NodeUnavailable
from atlas.vpn.node_client import UnknownNode as UnknownNode
from atlas.vpn.nodes import NodeConfig as NodeConfig
from atlas.vpn.nodes import NodeConfigError as NodeConfigError
from atlas.vpn.nodes import load_nodes_file as load_nodes_file
from atlas.vpn.nodes import parse_nodes as parse_nodes
from atlas.vpn.qr import qr_png as qr_png
from atlas.vpn.subscription import SubscriptionUserInfo as SubscriptionUserInfo
from atlas.vpn.subscription import render_subscription as render_subscription
from atlas.vpn.subscription import subscription_headers as subscription_headers
from atlas.vpn.subscription import subscription_token as subscription_token
from atlas.vpn.user_batch import MAX_BATCH_OPS as MAX_BATCH_OPS
from atlas.vpn.user_batch import OpResult as OpResult
from atlas.vpn.user_batch import UserOp as UserOp
from atlas.vpn.vless_user import InvalidUser as InvalidUser
from atlas.vpn.vless_user import VlessUser as VlessUser
