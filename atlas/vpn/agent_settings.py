"""Settings of the node agent (``atlas node``), read from ``ATLAS_NODE_*`` environment variables.

=============================  =====================================  ===========================
variable                       meaning                                default
=============================  =====================================  ===========================
``ATLAS_NODE_TOKEN``           bearer token the bot must present      (required, >= 16 chars)
``ATLAS_NODE_LISTEN_HOST``     address the agent listens on           ``127.0.0.1``
``ATLAS_NODE_LISTEN_PORT``     port the agent listens on (0 = any)    ``8765``
``ATLAS_NODE_CORE_API``        the core's gRPC API ``host:port``      ``127.0.0.1:10085``
``ATLAS_NODE_FLAVOUR``         ``xray`` or ``v2ray`` (protobuf names) ``xray``
``ATLAS_NODE_INBOUND_TAG``     tag of the VLESS inbound               ``vless-in``
``ATLAS_NODE_CONFIG_PATH``     the core's JSON config file            ``/usr/local/etc/xray/config.json``
``ATLAS_NODE_CORE_TIMEOUT``    seconds allowed per gRPC call          ``5``
``ATLAS_NODE_TLS_CERT_FILE``   PEM certificate (chain): serve HTTPS   unset: plain HTTP
``ATLAS_NODE_TLS_KEY_FILE``    PEM private key of that certificate    unset (set both or neither)
=============================  =====================================  ===========================

Without the TLS files the agent speaks plain HTTP: keep it on localhost or a private network, or
put it behind a TLS reverse proxy (nginx, Caddy: terminate TLS there and proxy to
``http://127.0.0.1:8765``; the bearer token then never crosses a network in clear). With them it
serves HTTPS itself; a self-signed certificate needs the bot's node entry to name its CA
(``agent_ca_file`` in the nodes file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from atlas.vpn.wire.grpc import split_address


class NodeAgentSettings(BaseSettings):
    """Validated agent settings; a bad value fails at start with the variable's name."""

    model_config = SettingsConfigDict(env_prefix="ATLAS_NODE_", extra="ignore", frozen=True)

    token: SecretStr
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8765, ge=0, le=65535)
    core_api: str = "127.0.0.1:10085"
    flavour: Literal["xray", "v2ray"] = "xray"
    inbound_tag: str = Field(default="vless-in", min_length=1)
    config_path: Path = Path("/usr/local/etc/xray/config.json")
    core_timeout: float = Field(default=5.0, gt=0, le=120)
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None

    @field_validator("token")
    @classmethod
    def _token_long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("token must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _tls_files_together(self) -> NodeAgentSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both ATLAS_NODE_TLS_CERT_FILE and ATLAS_NODE_TLS_KEY_FILE, or neither")
        return self

    @field_validator("core_api")
    @classmethod
    def _core_api_is_address(cls, value: str) -> str:
        split_address(value)
        return value
