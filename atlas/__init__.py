"""Atlas: sell and run VPN access through Telegram on a supervised trio runtime.

Layers, bottom to top (imports only flow downwards):

    domain        pure rules, no I/O, no async
    clock, net    business time; the connection guard and the one outbound HTTP helper
    storage       the only code that touches asyncpg: pool, budget, units of work
    supervision   supervisors, child specs, crash reports (trio only)
    actors        the actor base and one module per worker
    vpn, payments, telegram   clients of the outside world
    web           the ASGI app
    runtime       settings, logging, the asyncio bridge, the app tree, the CLI
"""

__version__ = "0.1.0"
