"""The node agent over HTTPS with its own certificate, and the bot's client trusting it.

The certificate is self-signed, made in the test with the ``openssl`` command line tool (Debian's
``openssl`` package, present wherever Python's ssl module is built). No core runs: TLS is about the
agent's HTTP face, and health answers ``"core": "down"`` without one.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest
import trio
from pydantic import SecretStr

from atlas.vpn.agent import run_agent
from atlas.vpn.agent_settings import NodeAgentSettings
from atlas.vpn.core_config import render_server_config
from atlas.vpn.node_client import NodeClient, NodeHealth, NodeUnavailable
from atlas.vpn.nodes import NodeConfig, NodeConfigError
from tests._vpn_support import free_ports

TOKEN = "tls-agent-token-0123456789"


async def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    await trio.run_process(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        capture_stdout=True,
        capture_stderr=True,
    )
    return cert, key


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def node(url: str, ca_file: str = "") -> NodeConfig:
    return NodeConfig(
        name="tls", agent_url=url, token=TOKEN, public_host="127.0.0.1", port=1, security="none",
        agent_ca_file=ca_file,
    )


async def test_the_agent_serves_https_and_a_client_trusting_its_ca_talks_to_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    cert, key = await self_signed(tmp_path)
    vless_port, api_port = free_ports(2)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(render_server_config(vless_port=vless_port, api_port=api_port)))
    settings = NodeAgentSettings(
        token=SecretStr(TOKEN),
        listen_port=0,
        core_api=f"127.0.0.1:{api_port}",
        flavour="v2ray",
        config_path=config_path,
        tls_cert_file=cert,
        tls_key_file=key,
    )
    url: str = await nursery.start(run_agent, settings)
    assert url.startswith("https://127.0.0.1:")

    trusting = NodeClient(node(url, str(cert)), timeout=5)
    try:
        assert await trusting.health() == NodeHealth(core_up=False, users=0)
        assert (await trusting.list_users()).users == ()
    finally:
        await trusting.aclose()

    # A client that does not trust the certificate refuses the connection: no token is sent.
    stranger = NodeClient(node(url), timeout=5)
    try:
        with pytest.raises(NodeUnavailable) as refused:
            await stranger.health()
        assert any(isinstance(exc, ssl.SSLCertVerificationError) for exc in causes(refused.value))
    finally:
        await stranger.aclose()
    # Plain HTTP to the TLS port gets no answer from the API.
    plain = NodeClient(node(url.replace("https://", "http://")), timeout=5)
    try:
        with pytest.raises(NodeUnavailable):
            await plain.health()
    finally:
        await plain.aclose()


async def test_tls_settings_are_checked(tmp_path: Path) -> None:
    cert, _key = await self_signed(tmp_path)
    with pytest.raises(pydantic.ValidationError, match="both ATLAS_NODE_TLS_CERT_FILE"):
        NodeAgentSettings(token=SecretStr(TOKEN), tls_cert_file=cert)
    with pytest.raises(pydantic.ValidationError, match="tls_key_file"):
        NodeAgentSettings(token=SecretStr(TOKEN), tls_cert_file=cert, tls_key_file=tmp_path / "missing.pem")
    with pytest.raises(NodeConfigError, match="agent_ca_file: is only allowed with an https"):
        node("http://127.0.0.1:1", str(cert))
    with pytest.raises(ValueError, match="agent_ca_file"):
        NodeClient(node("https://127.0.0.1:1", str(tmp_path / "missing.pem")))
