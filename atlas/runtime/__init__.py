"""The top of Atlas: settings, logging, the asyncio bridge, the application tree and the CLI."""
