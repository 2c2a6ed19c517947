"""Benchmark: the pure Python work of rendering the screens of the bot benchmark's update mix.

What a handler does besides the database and the Bot API call: its texts (``Translator.t``, with
amounts formatted by Babel), its keyboard (labels, callback data, aiogram models). One "render"
is the main menu (text with the balance + keyboard), the plans list (a price per plan + keyboard),
"my subscription"'s keyboard and the help screen's back button, in both languages.

Run it once per code version (``PYTHONPATH`` chooses the checkout) and interleave the runs; it
prints the CPU time per render (``time.process_time``), median of ``--rounds``::

    PYTHONPATH=$PWD .venv/bin/python bench/bench_screen_render.py --rounds 5 --renders 300
"""

from __future__ import annotations

import argparse
import statistics
import time

from atlas.telegram import keyboards
from atlas.telegram.formatting import format_money
from atlas.telegram.i18n import bundled

_PLANS = (("m1", 19_900), ("m3", 49_900), ("m12", 179_000))


def render_once(lang: str, balance_minor: int) -> int:
    """Render the four screens once; returns the total text length (keeps the work observable)."""
    tr = bundled()
    balance = format_money(balance_minor, "RUB", lang)
    menu_text = tr.t(lang, "user.menu.text", name="Ann", balance=balance)
    menu = keyboards.main_menu(lang, trial_available=True, support=False)
    options = [(code, f"{code} · {format_money(price, 'RUB', lang)}") for code, price in _PLANS]
    plans = keyboards.plans(lang, options)
    sub = keyboards.subscription(lang, active=True, auto_renew=False)
    back = keyboards.back_to_menu(lang)
    rows = [row for markup in (menu, plans, sub, back) for row in markup.inline_keyboard]
    labels = [button.text for row in rows for button in row]
    return len(menu_text) + sum(len(label) for label in labels)


def main() -> None:
    """Time ``--renders`` renders per round, ``--rounds`` rounds; print the median µs per render."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--renders", type=int, default=300)
    args = parser.parse_args()
    render_once("ru", 0)  # load the catalogs and Babel's data outside the timing
    per_render: list[float] = []
    for _ in range(args.rounds):
        started = time.process_time()
        for i in range(args.renders):
            # A few distinct balances, as many users have: the amounts are not all one cache entry.
            render_once("ru" if i % 2 else "en", (i % 50) * 1_000)
        per_render.append((time.process_time() - started) / args.renders * 1e6)
    rounds = ", ".join(f"{value:.0f}" for value in per_render)
    print(f"CPU per render: median {statistics.median(per_render):.0f} µs (rounds: {rounds})")


if __name__ == "__main__":
    main()
