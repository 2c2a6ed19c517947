"""The Telegram side of Atlas: the guarded aiogram session, routers, keyboards, texts, intake, sender.

- :mod:`.session`: the Bot with a session that refuses to call Telegram inside a unit of work.
- :mod:`.intake`: long polling driven by Atlas (with a singleton advisory lock) or a webhook route.
- :mod:`.dispatch`: per-user ordered dispatch into aiogram, within bounds, with an error boundary.
- :mod:`.wiring`: the aiogram root, feature routers in one ordered list.
- :mod:`.inline_callbacks`: sync filters and handlers called inline (aiogram would use a thread).
- :mod:`.i18n`: texts in locale files (``locales/<lang>.toml``), ``t(lang, key, **params)``.
- :mod:`.pacing`: the global and per-chat send pacing the outbox sender uses.

The outbox sender itself is an actor: :mod:`atlas.actors.outbox_sender`.
"""

from atlas.telegram.dispatch import DispatchError as DispatchError
from atlas.telegram.dispatch import DispatchFull as DispatchFull
from atlas.telegram.dispatch import DispatchNotRunning as DispatchNotRunning
from atlas.telegram.dispatch import DispatchSettings as DispatchSettings
from atlas.telegram.dispatch import DispatchStatistics as DispatchStatistics
from atlas.telegram.dispatch import LatencyReservoir as LatencyReservoir
from atlas.telegram.dispatch import UpdateDispatcher as UpdateDispatcher
from atlas.telegram.dispatch import stored_language as stored_language
from atlas.telegram.i18n import Markup as Markup
from atlas.telegram.i18n import Translator as Translator
from atlas.telegram.i18n import t as t
from atlas.telegram.intake import IntakeError as IntakeError
from atlas.telegram.intake import IntakeRefused as IntakeRefused
from atlas.telegram.intake import IntakeStatistics as IntakeStatistics
from atlas.telegram.intake import IntakeUnauthorized as IntakeUnauthorized
from atlas.telegram.intake import PollingIntake as PollingIntake
from atlas.telegram.intake import PollingSettings as PollingSettings
from atlas.telegram.intake import configure_webhook as configure_webhook
from atlas.telegram.intake import telegram_webhook_route as telegram_webhook_route
from atlas.telegram.pacing import ChatPacer as ChatPacer
from atlas.telegram.pacing import Pacer as Pacer
from atlas.telegram.session import GuardedHttpxSession as GuardedHttpxSession
from atlas.telegram.session import make_bot as make_bot
from atlas.telegram.wiring import build_dispatcher as build_dispatcher
