""" "My subscription": status, expiry, days left, share links, the subscription URL, a QR code,
setup guides per platform, key reissue (with a confirmation step) and auto-renew on/off.

Every action reads or changes the presser's own subscription (``ui.user.id``); there is no
subscription id in any button to forge.
"""

from __future__ import annotations

import datetime as dt

from aiogram import F, Router
from aiogram.types import BufferedInputFile, CallbackQuery

from atlas.storage import Tx
from atlas.storage.units import (
    SubscriptionView,
    UserView,
    get_subscription_view,
    reissue_key,
    set_auto_renew,
)
from atlas.telegram import keyboards
from atlas.telegram.callbacks import MenuAction, MenuCb, Platform, SubAction, SubCb
from atlas.telegram.routers._screen import Screen, ScreenMiddleware, code, reads
from atlas.vpn import qr_png, vless_link


def share_links(ui: Screen, view: SubscriptionView) -> list[str]:
    """One VLESS share link per enabled node for the subscription's present key (none without one)."""
    if view.key_uuid is None:
        return []
    return [vless_link(str(view.key_uuid), node) for node in ui.config.enabled_nodes]


def describe(ui: Screen, view: SubscriptionView) -> str:
    """The text of the "my subscription" screen."""
    lines = [
        ui.t(
            "user.sub.status",
            status=ui.t(f"user.sub.state.{'active' if view.is_active else 'inactive'}"),
            kind=ui.t(f"user.sub.kind.{view.kind.value}"),
            expires_at=view.expires_at,
            days_left=view.days_left,
        ),
        ui.t("user.sub.auto_renew_on" if view.auto_renew else "user.sub.auto_renew_off"),
    ]
    if view.is_active:
        links = share_links(ui, view)
        if links:
            lines.append(ui.t("user.sub.links"))
            lines.extend(code(link) for link in links)
        else:
            lines.append(ui.t("user.sub.no_links"))
        lines.append(ui.t("user.sub.url"))
        lines.append(code(ui.config.subscription_url(view.token)))
        lines.append(ui.t("user.sub.import_hint"))
    else:
        lines.append(ui.t("user.sub.renew_hint"))
    return "\n\n".join(lines)


async def subscription_of(tx: Tx, user: UserView, now: dt.datetime) -> SubscriptionView | None:
    """The screen read of this router: the user's subscription (see :func:`._screen.reads`)."""
    return await get_subscription_view(tx, user_id=user.id, now=now)


async def show_subscription(ui: Screen, view: SubscriptionView | None = None) -> None:
    """Show the "my subscription" screen (or the "no subscription yet" one); ``view`` when the
    caller already has it (a trial just started), else it is read."""
    view = view if view is not None else await ui.read(subscription_of)
    if view is None:
        await ui.show(
            ui.t("user.sub.none"),
            keyboards.no_subscription(ui.lang, trial_available=ui.user.trial_used_at is None),
        )
        return
    await ui.show(
        describe(ui, view), keyboards.subscription(ui.lang, active=view.is_active, auto_renew=view.auto_renew)
    )


async def _active_view(ui: Screen) -> SubscriptionView | None:
    """The presser's active subscription, or None after telling them they have none."""
    view = await ui.read(subscription_of)
    if view is None or not view.is_active:
        await ui.show(
            ui.t("user.sub.none"),
            keyboards.no_subscription(ui.lang, trial_available=ui.user.trial_used_at is None),
        )
        return None
    return view


def build_router() -> Router:
    """The "my subscription" router."""
    router = Router(name="user.subscription")
    router.callback_query.middleware(ScreenMiddleware())

    # Display-only handlers declare their read: it runs in the user lookup's unit.
    @router.callback_query(MenuCb.filter(F.action == MenuAction.SUBSCRIPTION), flags=reads(subscription_of))
    async def on_subscription(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack()
        await show_subscription(ui)

    @router.callback_query(SubCb.filter(F.action == SubAction.QR), flags=reads(subscription_of))
    async def on_qr(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack()
        view = await _active_view(ui)
        if view is None:
            return
        url = ui.config.subscription_url(view.token)
        await ui.show_photo(
            BufferedInputFile(qr_png(url), filename="subscription.png"),
            ui.t("user.sub.qr_caption"),
            keyboards.back_to_subscription(ui.lang),
        )

    @router.callback_query(SubCb.filter(F.action == SubAction.GUIDE))
    async def on_guide(callback: CallbackQuery, callback_data: SubCb, ui: Screen) -> None:
        await ui.ack()
        if callback_data.platform is Platform.NONE:
            await ui.show(ui.t("user.guide.choose"), keyboards.guides(ui.lang))
        else:
            await ui.show(ui.t(f"user.guide.{callback_data.platform.value}"), keyboards.guides(ui.lang))

    @router.callback_query(SubCb.filter(F.action == SubAction.REISSUE), flags=reads(subscription_of))
    async def on_reissue(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack()
        if await _active_view(ui) is not None:
            await ui.show(ui.t("user.sub.reissue_confirm"), keyboards.reissue_confirm(ui.lang))

    @router.callback_query(SubCb.filter(F.action == SubAction.REISSUE_CONFIRM))
    async def on_reissue_confirmed(callback: CallbackQuery, ui: Screen) -> None:
        await ui.run(reissue_key, user_id=ui.user.id, now=ui.clock.now())
        await ui.ack(ui.t("user.sub.reissued"))
        await show_subscription(ui)

    @router.callback_query(SubCb.filter(F.action.in_({SubAction.AUTO_ON, SubAction.AUTO_OFF})))
    async def on_auto_renew(callback: CallbackQuery, callback_data: SubCb, ui: Screen) -> None:
        enabled = callback_data.action is SubAction.AUTO_ON
        await ui.run(set_auto_renew, user_id=ui.user.id, enabled=enabled, now=ui.clock.now())
        await ui.ack(ui.t("user.sub.auto_renew_on" if enabled else "user.sub.auto_renew_off"))
        await show_subscription(ui)

    return router
