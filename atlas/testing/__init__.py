"""Emulators shipped with Atlas (Telegram Bot API, VPN node, Crypto Pay) for tests and `atlas demo`."""
