"""Callback data of every inline button: one ``CallbackData`` class per kind of button.

aiogram validates a class at definition (a ``prefix`` is required) and ``pack()`` refuses data over
Telegram's 64 bytes, so a button that cannot be sent fails when it is built, not when it is pressed.

Rules every class here keeps (the bot's defence against forged callback data):

* **No ids of whom to act on.** Callback data is chosen by the client and can be forged by anyone;
  a handler acts for ``callback.from_user.id`` only (Telegram authenticates that field). So a class
  never carries a user id, a subscription id or a payment id: the most a forger can do is press,
  for themselves, a button they could have pressed anyway.
* **Closed vocabularies are enums.** An action or a language outside the enum fails aiogram's
  ``unpack`` and the filter does not match; the fallback router then answers "this button is
  outdated" and nothing changes. Open values (a plan code, an amount) are checked by the units of
  work, whose refusals are domain errors answered with their localized text.
* **Prefixes are short and unique** (they share the 64 bytes with the fields): ``m`` menu,
  ``s`` subscription, ``p`` plan, ``b`` buy, ``t`` top-up, ``l`` language. Helpers B (admin) and
  C (payments) append their own classes below with prefixes of their own.
"""

from __future__ import annotations

import enum

from aiogram.filters.callback_data import CallbackData


class MenuAction(enum.StrEnum):
    """The screens reachable from the main menu."""

    MENU = "menu"
    TRIAL = "trial"
    SUBSCRIPTION = "sub"
    PLANS = "plans"
    TOPUP = "topup"
    PROMO = "promo"
    REFERRAL = "ref"
    LANGUAGE = "lang"
    HELP = "help"


class MenuCb(CallbackData, prefix="m"):
    """Open a screen of the main menu."""

    action: MenuAction


class SubAction(enum.StrEnum):
    """What the buttons under "my subscription" do (always to the presser's own subscription)."""

    QR = "qr"
    GUIDE = "guide"
    REISSUE = "reissue"  # asks for confirmation
    REISSUE_CONFIRM = "reissue_ok"
    AUTO_ON = "auto_on"
    AUTO_OFF = "auto_off"


class Platform(enum.StrEnum):
    """Platforms with setup instructions."""

    NONE = "-"
    ANDROID = "android"
    IOS = "ios"
    WINDOWS = "windows"
    MACOS = "macos"


class SubCb(CallbackData, prefix="s"):
    """An action on the presser's subscription; ``platform`` only for :attr:`SubAction.GUIDE`."""

    action: SubAction
    platform: Platform = Platform.NONE


class PlanCb(CallbackData, prefix="p"):
    """Show one plan and the ways to pay for it. ``plan`` is checked by the units (forged: unknown)."""

    plan: str


class PayMethod(enum.StrEnum):
    """How a plan is paid."""

    BALANCE = "bal"
    STARS = "xtr"
    CRYPTO = "cp"


class BuyCb(CallbackData, prefix="b"):
    """Buy ``plan`` with ``method``."""

    plan: str
    method: PayMethod


class TopupCb(CallbackData, prefix="t"):
    """Top the balance up by ``amount_minor`` through Crypto Pay (checked by the unit's limits)."""

    amount_minor: int


class Language(enum.StrEnum):
    """The languages the bot speaks (``users.language`` values)."""

    RU = "ru"
    EN = "en"


class LangCb(CallbackData, prefix="l"):
    """Switch the presser's language."""

    lang: Language


# ---------------------------------------------------------------------------------------------
# Admin buttons (helper B). Every handler behind them is reachable only by configured admin ids
# (atlas.telegram.routers.admin.AdminFilter); to anyone else these data mean nothing and fall
# through to the fallback like any unknown button. Unlike user buttons, admin buttons do carry the
# id of the user they act on: an admin acts on others by design, and only an admin can press them.


class SupportAction(enum.StrEnum):
    """The user's support buttons (always about the presser's own message and ticket)."""

    WRITE = "write"  # "Write to support": the next text goes to support
    SEND = "send"  # "Send this to support?" yes: the text the bot did not understand
    DISCARD = "discard"  # ... no
    CANCEL = "cancel"  # leave the "write your message" prompt


class SupportCb(CallbackData, prefix="sup"):
    """A support button of a user (``sup``); the text itself waits in the conversation state."""

    action: SupportAction


class SupportTicketCb(CallbackData, prefix="spt"):
    """"Close ticket" under a notice in the support chat. It carries the ticket id, so it counts
    only for a press on a message *of the support chat* (Telegram sets ``callback.message.chat``;
    :class:`~atlas.telegram.routers.support_chat.SupportChatFilter`); anywhere else it means nothing
    and falls through to the fallback like any unknown button."""

    ticket_id: int


class AdminAction(enum.StrEnum):
    """The screens and switches of the admin menu."""

    MENU = "menu"
    STATS = "stats"
    BROADCAST = "bc"
    LOOKUP = "find"
    PROMOS = "promos"
    PROMO_NEW = "promo_new"
    CRASHES = "crashes"
    EXPORT_USERS = "csv_u"
    EXPORT_PAYMENTS = "csv_p"
    MAINTENANCE = "maint"
    MAINTENANCE_ON = "maint_on"
    MAINTENANCE_OFF = "maint_off"
    TICKETS = "tickets"


class AdminCb(CallbackData, prefix="adm"):
    """Open an admin screen or flip a switch."""

    action: AdminAction


class StatsPeriod(enum.StrEnum):
    """Revenue and new-user periods of the stats screen."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"


class AdminStatsCb(CallbackData, prefix="ads"):
    """Show stats over ``period``."""

    period: StatsPeriod


class Segment(enum.StrEnum):
    """Broadcast segments (``broadcasts.segment`` values)."""

    ALL = "all"
    ACTIVE = "active"
    EXPIRED = "expired"
    TRIAL = "trial"
    NEVER_PAID = "never_paid"


class AdminSegmentCb(CallbackData, prefix="adg"):
    """Choose the segment of a new broadcast."""

    segment: Segment


class BroadcastAction(enum.StrEnum):
    """What the preview's buttons do."""

    CONFIRM = "ok"
    CANCEL = "no"


class AdminBroadcastCb(CallbackData, prefix="adb"):
    """Confirm or cancel the draft ``broadcast_id`` (a confirmed one cannot be confirmed again)."""

    action: BroadcastAction
    broadcast_id: int


class UserAction(enum.StrEnum):
    """Actions on a user card."""

    REFRESH = "card"
    GRANT = "grant"
    ADJUST = "adjust"
    BAN = "ban"
    UNBAN = "unban"


class AdminUserCb(CallbackData, prefix="adu"):
    """An action on the user ``user_id`` (grant and adjust ask for the amount and a reason)."""

    action: UserAction
    user_id: int


class AdminPromoPageCb(CallbackData, prefix="adp"):
    """The page of promo codes after ``after`` (keyset; empty: the first page)."""

    after: str = ""


class AdminTicketPageCb(CallbackData, prefix="adt"):
    """The page of open support tickets with ids below ``before`` (keyset; 0: the newest)."""

    before: int = 0


class AdminTicketCb(CallbackData, prefix="adk"):
    """Show the support ticket ``ticket_id`` and its latest messages."""

    ticket_id: int
