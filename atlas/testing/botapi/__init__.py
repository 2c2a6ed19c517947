"""An emulated Telegram Bot API for tests and ``atlas demo``.

The real aiogram ``Bot`` talks to it over HTTP (``make_bot(token, emulator.url)``); scripted users
(:class:`EmulatedUser`) type, press buttons and pay in Stars; faults can be injected per method and
chat; every ``send*`` call is timestamped so that tests can check the bot's flood discipline.

Modules: ``emulator`` (the facade), ``users`` (scripted users), ``groups`` (group chats with
members, privacy mode), ``records`` (what was seen),
``faults``, ``rates``, ``errors``; the private ``_app`` (HTTP), ``_core`` (state),
``_messages`` / ``_payments`` / ``_updates`` (the Bot API methods), ``_params`` and ``_validate``
(decoding and Telegram's input checks), ``_files`` (uploaded bytes, bounded); the web chat page
(``emulator.webchat_url()``): ``_webchat`` (its routes), ``_webchat_view`` (message views, history
cursors), ``_telegram_html`` (bot HTML as safe nodes) and the static ``webchat/`` files.
"""

from atlas.testing.botapi._webchat import WEBCHAT_USER_ID as WEBCHAT_USER_ID
from atlas.testing.botapi.emulator import DEFAULT_TOKEN as DEFAULT_TOKEN
from atlas.testing.botapi.emulator import BotApiEmulator as BotApiEmulator
from atlas.testing.botapi.emulator import EmulatorStatistics as EmulatorStatistics
from atlas.testing.botapi.errors import EmulatorError as EmulatorError
from atlas.testing.botapi.errors import NothingInTime as NothingInTime
from atlas.testing.botapi.errors import ScriptError as ScriptError
from atlas.testing.botapi.faults import InjectedFault as InjectedFault
from atlas.testing.botapi.groups import EmulatedGroup as EmulatedGroup
from atlas.testing.botapi.rates import RateLimits as RateLimits
from atlas.testing.botapi.rates import max_in_window as max_in_window
from atlas.testing.botapi.records import CallbackAnswer as CallbackAnswer
from atlas.testing.botapi.records import Charge as Charge
from atlas.testing.botapi.records import ChatRecord as ChatRecord
from atlas.testing.botapi.records import FileMeta as FileMeta
from atlas.testing.botapi.records import InvoiceRecord as InvoiceRecord
from atlas.testing.botapi.records import PaymentOutcome as PaymentOutcome
from atlas.testing.botapi.records import PreCheckoutAnswer as PreCheckoutAnswer
from atlas.testing.botapi.records import RecordKind as RecordKind
from atlas.testing.botapi.records import Refund as Refund
from atlas.testing.botapi.records import SendKind as SendKind
from atlas.testing.botapi.records import SendStamp as SendStamp
from atlas.testing.botapi.records import ServedError as ServedError
from atlas.testing.botapi.records import WebhookAttempt as WebhookAttempt
from atlas.testing.botapi.records import WebhookConfig as WebhookConfig
from atlas.testing.botapi.users import EmulatedUser as EmulatedUser
