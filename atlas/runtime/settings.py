"""Settings: environment variables with the ``ATLAS_`` prefix, or a ``.env`` file.

Every setting is validated when the process starts; a bad one stops it with a :class:`SettingsError`
that names the variable and the value, never a traceback from deep inside pydantic. Secrets are
``SecretStr`` so that they cannot end up in a log line or a crash report by accident, and the error
never shows a secret's value: a bad secret is shown as ``<secret>``, and a rule about several
settings at once (the webhook URL without its secret) names the variables, never the input (which
pydantic would otherwise print whole: every token and the database password).
"""

from __future__ import annotations

import re
import zoneinfo
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from atlas.domain import Currency, InvalidAmount, check_amount
from atlas.domain.money import parse_amount

PREFIX = "ATLAS_"


class SettingsError(ValueError):
    """One or more settings are invalid; the message lists each variable, value and reason."""


class Settings(BaseSettings):
    """Everything an operator can configure. Defaults run a local development instance."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Database: unset means an embedded PostgreSQL under data_dir.
    database_url: SecretStr | None = None
    data_dir: Path = Path(".atlas")
    db_pool_size: int = Field(10, ge=1, le=200)
    db_acquire_timeout: float = Field(10.0, gt=0)
    db_unit_timeout: float = Field(30.0, gt=0)
    db_statement_timeout: float = Field(30.0, gt=0)

    # Web server: health, readiness, status, metrics, webhooks, subscription URLs.
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    # Operator endpoints (/status, /metrics): a bearer token they require, and/or a listener of
    # their own (then the public one no longer serves them). /healthz and /readyz stay open.
    operator_token: SecretStr | None = None
    operator_http_host: str = "127.0.0.1"
    operator_http_port: int | None = Field(None, ge=0, le=65535)

    # Logging.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    # Supervision.
    max_restarts: int = Field(5, ge=0)
    restart_period: float = Field(30.0, gt=0)
    slow_step_threshold: float = Field(0.1, gt=0)
    scheduler_watchdog_timeout: float = Field(60.0, gt=0)
    shutdown_timeout: float = Field(10.0, gt=0)
    # Crash reports are sent to every admin chat, at most one per actor per this many seconds.
    crash_alert_interval: float = Field(600.0, gt=0)
    seed: int | None = None
    # For demos and tests: business time runs this many times faster than real time (1 in
    # production); network timeouts, leases and retries stay real (docs/architecture.md, "Time").
    clock_speed: float = Field(1.0, ge=1.0, allow_inf_nan=False)
    # Trio seconds: the shortest period any periodic actor gets once its period is scaled by the speed.
    tick_floor: float = Field(0.25, ge=0.0, allow_inf_nan=False)

    # The shop: plans (a reviewed TOML file; unset = the example shipped with Atlas), the balance
    # currency, trial length, renewal policy, referral reward.
    plans_file: Path | None = None
    currency: str = Field("RUB", pattern=r"^[A-Z]{3}$")
    # The operator's timezone (IANA name): every date the bot shows is in it.
    timezone: str = "UTC"
    trial_days: int = Field(3, ge=1, le=90)
    renew_window_hours: float = Field(24.0, gt=0)
    renew_retry_hours: float = Field(6.0, gt=0)
    referral_percent: int = Field(10, ge=0, le=100)
    # Top-ups: the smallest amount a user may top up (a decimal in the balance currency, parsed
    # exactly, never through float), and how many invoices one user may open per hour.
    min_topup: str = "100"
    invoices_per_hour: int = Field(10, ge=1, le=1000)

    # VPN nodes (a TOML file of [[nodes]]; unset = no nodes, keys stay pending) and the public URL
    # users import subscriptions from.
    nodes_file: Path | None = None
    public_base_url: str = "http://127.0.0.1:8080"
    support_url: str | None = None
    # The subscription URL: the bot's @username, named in the expired/banned placeholders and the
    # page's renew button (unset: "renew in the bot"), and a message for apps that show one.
    bot_username: str | None = Field(None, pattern=r"^@?[A-Za-z][A-Za-z0-9_]{3,31}$")
    subscription_announce: str | None = Field(None, min_length=1, max_length=200)

    # Telegram (unset token = no bot) and Crypto Pay (unset token = no crypto payments).
    bot_token: SecretStr | None = None
    telegram_api_base: str | None = None
    admin_ids: list[int] = Field(default_factory=list)
    # Webhook intake instead of long polling: the public HTTPS URL Telegram should call (served at
    # /webhooks/telegram behind your proxy) and the secret it must present. Both or neither.
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: SecretStr | None = None
    cryptopay_token: SecretStr | None = None
    cryptopay_network: Literal["mainnet", "testnet"] = "mainnet"
    cryptopay_base_url: str | None = None

    @field_validator("timezone")
    @classmethod
    def _iana_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA timezone name (e.g. UTC, Europe/Moscow)") from None
        return value

    # Support tickets: the chat (a group) where support agents read users' messages and reply to
    # them (unset: no tickets; Help shows ATLAS_SUPPORT_URL or nothing), how many messages one user
    # may send it per hour, and the language of the notices the bot posts there.
    support_chat_id: int | None = None
    support_messages_per_hour: int = Field(20, ge=1, le=1000)
    support_language: Literal["ru", "en"] = "en"

    @field_validator("public_base_url", "support_url", "telegram_webhook_url", "telegram_api_base",
                     "cryptopay_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # These end up in headers, links and API calls: a value such as "@support" must fail here,
        # naming the variable, not deep inside a request handler.
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgres://", "postgresql://")):
            raise ValueError("must start with postgresql:// (or postgres://)")
        return value

    @field_validator("operator_token")
    @classmethod
    def _operator_token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("cryptopay_token")
    @classmethod
    def _cryptopay_prices_in_currency(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # Every Crypto Pay invoice is priced in the balance currency (checked live at start too).
        # A field validator, so the error names this variable and never shows the token.
        if value is None:
            return value
        # Imported here, not at the top: atlas.payments pulls in aiogram (seconds of CPU to import),
        # which ``atlas crashes``, ``atlas check`` and ``atlas migrate`` never need.
        from atlas.payments.cryptopay_fiats import DOCUMENTED_FIATS

        currency = info.data.get("currency")
        if isinstance(currency, str) and currency not in DOCUMENTED_FIATS:
            raise ValueError(
                f"ATLAS_CURRENCY={currency}: Crypto Pay cannot price invoices in it; "
                f"use one of {', '.join(sorted(DOCUMENTED_FIATS))} or unset ATLAS_CRYPTOPAY_TOKEN"
            )
        return value

    @model_validator(mode="after")
    def _webhook_pair(self) -> Settings:
        if (self.telegram_webhook_url is None) != (self.telegram_webhook_secret is None):
            raise ValueError("set ATLAS_TELEGRAM_WEBHOOK_URL and ATLAS_TELEGRAM_WEBHOOK_SECRET together")
        return self

    @model_validator(mode="after")
    def _min_topup_is_an_amount(self) -> Settings:
        money = Currency.of(self.currency)
        try:
            check_amount(parse_amount(self.min_topup, exponent=money.exponent), money)
        except InvalidAmount as exc:
            raise ValueError(
                f"ATLAS_MIN_TOPUP={self.min_topup!r} is not a positive amount in {money.code} "
                f"({exc.params['reason']})"
            ) from None
        return self

    @property
    def min_topup_minor(self) -> int:
        """``min_topup`` in minor units of the balance currency."""
        return parse_amount(self.min_topup, exponent=Currency.of(self.currency).exponent)


def _secret_fields() -> frozenset[str]:
    """Fields whose value must never be shown: their type is (or contains) ``SecretStr``."""
    return frozenset(
        name for name, info in Settings.model_fields.items() if "SecretStr" in repr(info.annotation)
    )


def _describe(error: ValidationError) -> str:
    secret = _secret_fields()
    lines = []
    for item in error.errors():
        loc: tuple[Any, ...] = tuple(item["loc"])
        if not loc:
            # A rule about several settings (a model validator): pydantic's "input" is the whole
            # environment, secrets included. Its message names the variables; show only that.
            lines.append(str(item["msg"]).removeprefix("Value error, "))
            continue
        field = str(loc[0])
        name = PREFIX + "_".join(str(part) for part in loc).upper()
        hidden = field in secret or "url" in field or "token" in field
        shown = "<secret>" if hidden else repr(item.get("input"))
        lines.append(f"{name}={shown}: {item['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read the environment (and ``.env``); raise :class:`SettingsError` naming each bad variable.

    The message never holds a secret's value (see the module docstring).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except SourceError as exc:
        # pydantic-settings could not decode a complex value (ATLAS_ADMIN_IDS=abc is not JSON); its
        # message names the field and the source, never the value.
        found = re.search(r'field "(\w+)"', str(exc))
        name = PREFIX + found.group(1).upper() if found else "a setting"
        raise SettingsError(
            f"invalid settings:\n  {name}: could not be parsed (list settings take JSON, e.g. [12345])"
        ) from None
