"""HTTP serving: the ASGI app of the bot process and the helper that serves any ASGI app on trio."""
