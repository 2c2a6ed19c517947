"""The demo's VPN node: a real V2Ray core driven by the node agent when ``v2ray`` is installed,
the node emulator otherwise. Both speak the agent's HTTP API, so the tree cannot tell them apart.

A node outage is the core going away (the agent then answers that the core is down) or, for the
emulator, the agent refusing connections; either way the VPN controller must retry until the node
is back and then converge every key.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio
from pydantic import SecretStr

from atlas.testing.node_emulator import NodeEmulator
from atlas.vpn import NodeConfig
from atlas.vpn.agent import run_agent
from atlas.vpn.agent_settings import NodeAgentSettings
from atlas.vpn.core_config import render_server_config
from atlas.vpn.core_process import ManagedCore, core_command

NODE_NAME = "demo-1"
_INBOUND_TAG = "vless-in"
_CORE_STARTUP_TIMEOUT = 60.0  # a loaded machine may take a while to start a process


class DemoNode(Protocol):
    """What the demo needs of its node: its config, an outage and a recovery, its keys."""

    config: NodeConfig
    kind: str

    async def outage(self) -> None:
        """Take the node down."""

    async def recover(self) -> None:
        """Bring the node back."""


def _free_ports(n: int) -> list[int]:
    # Held open together so that they differ; the core binds them a moment later.
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class RealCoreNode:
    """V2Ray as the node's core, with ``atlas node``'s agent in front of it (in this process)."""

    config: NodeConfig
    core: ManagedCore
    nursery: trio.Nursery
    kind: str = "v2ray core + node agent"

    async def outage(self) -> None:
        """Stop the core: the agent stays up and answers that the core is down."""
        await self.core.stop()

    async def recover(self) -> None:
        """Start the core again from the config file the agent keeps."""
        await self.core.start(self.nursery, startup_timeout=_CORE_STARTUP_TIMEOUT)


@dataclass
class EmulatedNode:
    """The node emulator (no ``v2ray`` installed): an in-memory agent."""

    config: NodeConfig
    emulator: NodeEmulator
    kind: str = "node emulator (v2ray is not installed)"

    async def outage(self) -> None:
        """The agent refuses connections."""
        await self.emulator.outage()

    async def recover(self) -> None:
        """The agent answers again, same URL."""
        await self.emulator.recover()


async def start_node(nursery: trio.Nursery, directory: Path) -> DemoNode:
    """Start the node under ``directory``; the real core when ``v2ray`` is on PATH."""
    token = secrets.token_urlsafe(24)
    binary = shutil.which("v2ray")
    if binary is None:
        emulator = NodeEmulator(token)
        url: str = await nursery.start(emulator.run)
        return EmulatedNode(_node_config(url, token, port=443), emulator)
    vless_port, api_port = _free_ports(2)
    config_path = _write_core_config(directory, vless_port, api_port)
    core = ManagedCore(
        core_command(binary, config_path, "v2ray"),
        ready=[("127.0.0.1", api_port), ("127.0.0.1", vless_port)],
    )
    await core.start(nursery, startup_timeout=_CORE_STARTUP_TIMEOUT)
    agent = NodeAgentSettings(
        token=SecretStr(token),
        listen_port=0,
        core_api=f"127.0.0.1:{api_port}",
        flavour="v2ray",
        inbound_tag=_INBOUND_TAG,
        config_path=config_path,
    )
    agent_url: str = await nursery.start(run_agent, agent)
    return RealCoreNode(_node_config(agent_url, token, port=vless_port), core, nursery)


def _write_core_config(directory: Path, vless_port: int, api_port: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "v2ray-server.json"
    config_path.write_text(json.dumps(render_server_config(vless_port=vless_port, api_port=api_port)))
    return config_path


def _node_config(agent_url: str, token: str, *, port: int) -> NodeConfig:
    return NodeConfig(
        name=NODE_NAME,
        agent_url=agent_url,
        token=token,
        public_host="127.0.0.1",
        port=port,
        security="none",
        label="Demo node",
    )


def nodes_toml(node: NodeConfig) -> str:
    """The nodes file (``ATLAS_NODES_FILE``) naming ``node``, as an operator would write it."""
    return (
        "[[nodes]]\n"
        f'name = "{node.name}"\n'
        f'agent_url = "{node.agent_url}"\n'
        f'token = "{node.token}"\n'
        f'public_host = "{node.public_host}"\n'
        f"port = {node.port}\n"
        f'security = "{node.security}"\n'
        f'label = "{node.label}"\n'
    )
