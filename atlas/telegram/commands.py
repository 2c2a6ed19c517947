"""The bot's "/" menu: ``setMyCommands`` per language, and an extended list for each admin.

Telegram shows a client the command list of the most specific scope and language it has:
a chat scope (``BotCommandScopeChat``) beats the default scope, and a list for the client's
language beats the list without a language. So :func:`publish_commands` sets

========================  ==================  =====================================
scope                     language_code       commands
========================  ==================  =====================================
default                   each locale (ru,    the user commands, described in that
                          en)                 language
default                   none                the same, in the fallback language (a
                                              client in any other language)
chat of each admin id     each locale, none   the user commands, then the admin ones
========================  ==================  =====================================

It runs once when the telegram subtree starts (not per update). Every call is independent: a
refusal (an admin who never opened the bot has no chat: "chat not found") or a network error is
logged and the rest go on — a missing "/" menu is a cosmetic loss, never a reason not to start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import BotCommand, BotCommandScopeChat, BotCommandScopeDefault

from atlas.telegram.i18n import Translator, bundled

_log = logging.getLogger("atlas.telegram.commands")

USER_COMMANDS: tuple[str, ...] = ("start", "menu", "promo", "ref", "language", "help")
"""The commands every user gets in the menu, in menu order (each has ``commands.<name>`` text)."""
ADMIN_COMMANDS: tuple[str, ...] = ("admin", "stats", "find", "broadcast", "promos", "crashes")
"""What an admin's menu adds (the rest of the admin commands are reached from ``/admin``)."""


def command_list(translator: Translator, language: str | None, names: Iterable[str]) -> list[BotCommand]:
    """``names`` as Bot API commands, described in ``language`` (None: the fallback language)."""
    lang = language or translator.fallback
    return [BotCommand(command=name, description=translator.t(lang, f"commands.{name}")) for name in names]


async def _set(bot: Bot, commands: Sequence[BotCommand], **where: object) -> bool:
    try:
        await bot.set_my_commands(list(commands), **where)  # type: ignore[arg-type]
    except TelegramAPIError as exc:
        _log.warning("setMyCommands %s refused: %s", where, exc)
        return False
    return True


async def publish_commands(bot: Bot, admin_ids: Iterable[int], translator: Translator | None = None) -> int:
    """Set the "/" menus (see the module docstring); return how many lists Telegram accepted."""
    tr = translator or bundled()
    languages: list[str | None] = [*tr.languages, None]
    accepted = 0
    for lang in languages:
        accepted += await _set(
            bot, command_list(tr, lang, USER_COMMANDS), scope=BotCommandScopeDefault(), language_code=lang
        )
    for admin_id in sorted(set(admin_ids)):
        for lang in languages:
            accepted += await _set(
                bot,
                command_list(tr, lang, USER_COMMANDS + ADMIN_COMMANDS),
                scope=BotCommandScopeChat(chat_id=admin_id),
                language_code=lang,
            )
    _log.info("command menus set: %d lists", accepted)
    return accepted
