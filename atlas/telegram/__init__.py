"""The Telegram side of Atlas: the guarded aiogram session, routers, keyboards, texts, intake, sender."""
