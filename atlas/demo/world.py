"""The demo's outside world and the settings ``atlas run`` would read for it.

The Bot API and Crypto Pay emulators and the VPN node run in this process, on ephemeral ports of
127.0.0.1; the embedded PostgreSQL keeps its data under the demo's data directory (a fresh
temporary one unless ``--data-dir``). Nothing is read from the operator's configuration.
"""

from __future__ import annotations

import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from atlas.clock import Clock
from atlas.demo.crowd import ADMIN_ID
from atlas.demo.options import DemoOptions
from atlas.demo.vpn_node import DemoNode, nodes_toml, start_node
from atlas.runtime.settings import Settings, load_settings
from atlas.testing.botapi import DEFAULT_TOKEN, BotApiEmulator, RateLimits
from atlas.testing.cryptopay_emulator import CryptoPayEmulator

BOT_USERNAME = "atlas_demo_bot"
CRYPTOPAY_TOKEN = "1001:AtlasDemoToken"
# Telegram's flood limits as the demo's emulator enforces them: per chat one message a second on
# average with a burst of three (private chats tolerate short bursts; the strict default, one in
# any second, refuses a handler's reply that follows a notice the outbox sent a moment earlier:
# handlers do not wait for the outbox's pacing), and 100 a second for the whole bot, what
# Telegram grants a bot with paid broadcasts (the demo's crowd is far denser than a real shop's).
DEMO_LIMITS = RateLimits(global_per_window=300, per_chat_per_window=3, window=3.0)
TRIAL_DAYS = 1  # the shortest trial the settings allow, so that trials end within the run
# The demo's plan catalogue (written to the data directory as ATLAS_PLANS_FILE): short plans, so
# that purchases, renewals and paid expiry all happen within a few virtual days. Same format as
# atlas/domain/plans.example.toml. (A string here rather than a file: no package data to ship.)
DEMO_PLANS = """\
[[plans]]
code = "d1"
duration_days = 1
prices = { RUB = "20.00" }
stars_price = 10
titles = { ru = "1 день", en = "1 day" }

[[plans]]
code = "w1"
duration_days = 7
prices = { RUB = "120.00" }
stars_price = 60
titles = { ru = "1 неделя", en = "1 week" }
"""


@dataclass
class World:
    """The running emulators and node, and the settings of the tree that talks to them."""

    data_dir: Path
    emulator: BotApiEmulator
    cryptopay: CryptoPayEmulator
    node: DemoNode
    settings: Settings

    @property
    def web_url(self) -> str:
        """Atlas's public listener (``/status``, ``/sub``, the webhooks)."""
        return self.settings.public_base_url

    @property
    def webchat_url(self) -> str:
        """The web chat page of the Bot API emulator: the person running the demo is its user."""
        return self.emulator.webchat_url()


def prepare_data_dir(chosen: Path | None) -> Path:
    """The data directory: ``chosen`` (created if missing) or a fresh temporary one.

    The fresh one is opened to other users for traversal (0711), as the embedded PostgreSQL may run
    as its own system user (under root) and must reach its directory inside; nothing in it is
    readable to them.
    """
    if chosen is not None:
        chosen.mkdir(parents=True, exist_ok=True)
        return chosen.resolve()
    fresh = Path(tempfile.mkdtemp(prefix="atlas-demo-"))
    fresh.chmod(0o711)
    return fresh


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def open_world(nursery: trio.Nursery, options: DemoOptions, clock: Clock, data_dir: Path) -> World:
    """Start the emulators and the node in ``nursery``; return them with the tree's settings."""
    # Picked now so that Crypto Pay's webhook and the subscription links can name it before the
    # tree binds it (the tree's web listener takes this port).
    web_port = _free_port()
    web_url = f"http://127.0.0.1:{web_port}"
    emulator = BotApiEmulator(
        DEFAULT_TOKEN, bot_username=BOT_USERNAME, enforce_limits=True, limits=DEMO_LIMITS, clock=clock
    )
    api_url: str = await nursery.start(emulator.serve)
    cryptopay = CryptoPayEmulator(
        CRYPTOPAY_TOKEN, webhook_url=f"{web_url}/webhooks/cryptopay", clock=clock, seed=options.seed
    )
    cryptopay_url: str = await nursery.start(cryptopay.run)
    node = await start_node(nursery, data_dir / "node")
    nodes_file = data_dir / "nodes.toml"
    nodes_file.write_text(nodes_toml(node.config), encoding="utf-8")
    nodes_file.chmod(0o600)  # it holds the node's token
    plans_file = data_dir / "plans.toml"
    plans_file.write_text(DEMO_PLANS, encoding="utf-8")
    settings = load_settings(
        database_url=None,
        data_dir=data_dir,
        http_port=web_port,
        public_base_url=web_url,
        bot_token=emulator.token,
        telegram_api_base=api_url,
        bot_username=BOT_USERNAME,
        admin_ids=[ADMIN_ID],
        cryptopay_token=CRYPTOPAY_TOKEN,
        cryptopay_base_url=cryptopay_url,
        cryptopay_network="testnet",
        plans_file=plans_file,
        nodes_file=nodes_file,
        trial_days=TRIAL_DAYS,
        renew_window_hours=6.0,
        renew_retry_hours=1.0,
        seed=options.seed,
        clock_speed=clock.speed,
        operator_token=None,
        operator_http_port=None,
        telegram_webhook_url=None,
        telegram_webhook_secret=None,
    )
    return World(data_dir, emulator, cryptopay, node, settings)
