"""The memoised rendering of the hot path (issue 9, CPU per update): built once, same texts.

Keyboards of hashable arguments, parameterless texts and formatted amounts and dates are computed
once and reused. These tests pin that they are reused (the CPU saving), that what is reused is
exactly what a fresh build gives (the user sees the same), and that a reconfigured translator or
an unrenderable text is not served from a stale entry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from atlas.telegram import formatting, keyboards
from atlas.telegram.formatting import Formats, format_day, format_moment, format_money, load_timezone
from atlas.telegram.i18n import MissingParameter, Translator, bundled, configure_bundled, parse_text


@pytest.fixture
def fresh_bundled() -> Iterator[None]:
    """Leave the process-wide translator as it was found (another test may reconfigure it)."""
    yield
    configure_bundled(Formats())


def test_a_keyboard_is_built_once_and_equals_a_fresh_build() -> None:
    first = keyboards.main_menu("ru", trial_available=True, support=True)
    again = keyboards.main_menu("ru", trial_available=True, support=True)
    assert again is first  # memoised: no labels, models or callback data rebuilt
    fresh = keyboards.main_menu.__wrapped__("ru", trial_available=True, support=True)  # type: ignore[attr-defined]
    assert fresh is not first and fresh == first
    # Different arguments are different keyboards, not a stale entry.
    other = keyboards.main_menu("en", trial_available=False, support=True)
    assert other != first
    assert len(other.inline_keyboard) == len(first.inline_keyboard) - 1  # no trial row


def test_list_keyboards_are_memoised_by_their_options() -> None:
    options = [("m1", "1 month · 199 ₽"), ("m3", "3 months · 499 ₽")]
    plans = keyboards.plans("ru", options)
    assert keyboards.plans("ru", list(options)) is plans
    assert [row[0].text for row in plans.inline_keyboard[:2]] == [label for _, label in options]
    assert keyboards.plans("ru", options[:1]) is not plans


def test_a_reconfigured_translator_gets_keyboards_of_its_own(fresh_bundled: None) -> None:
    before = keyboards.back_to_menu("en")
    configure_bundled(Formats(timezone=load_timezone("Asia/Tokyo")))
    after = keyboards.back_to_menu("en")
    assert after is not before and after == before  # rebuilt through the new translator


def test_parameterless_texts_are_rendered_once_and_unrenderable_ones_still_fail() -> None:
    catalogs = {
        "en": {
            "plain": parse_text("en", "plain", "Menu {{x}} & more"),
            "needs": parse_text("en", "needs", "Hi, {name}"),
        }
    }
    tr = Translator(catalogs, default="en", fallback="en")
    first = tr.t("en", "plain")
    assert first == "Menu {x} & more"
    assert tr.t("en", "plain") is first  # memoised
    assert tr.t("en-US", "plain") == first  # another language code, same text
    for _ in range(2):  # a failure is not remembered as a text
        with pytest.raises(MissingParameter):
            tr.t("en", "needs")
    assert tr.t("en", "needs", name="<Ann>") == "Hi, &lt;Ann&gt;"


def test_formatted_amounts_and_dates_are_reused_and_unchanged() -> None:
    formatting._money.cache_clear()
    assert format_money(19_900, "RUB", "ru") == "199\u00a0₽"
    assert format_money(19_900, "RUB", "ru-RU") == "199\u00a0₽"  # the same entry: language normalised
    assert format_money(19_950, "RUB", "en") == "RUB\u00a0199.50"
    info = formatting._money.cache_info()
    assert (info.hits, info.misses) == (1, 2)
    moment = dt.datetime(2026, 12, 4, 19, 11, 42, tzinfo=dt.UTC)
    tokyo = load_timezone("Asia/Tokyo")
    assert format_moment(moment, "ru") == "4 декабря 2026, 19:11"
    assert format_moment(moment, "en", tokyo) == "Dec 5, 2026, 04:11"  # the zone is part of the key
    assert format_day(moment, "en", tokyo) == "Dec 5, 2026"
    assert format_moment(moment.replace(tzinfo=None), "ru") == "4 декабря 2026, 19:11"  # naive: UTC


def test_bundled_keyboard_labels_are_the_locale_texts() -> None:
    menu = keyboards.back_to_menu("ru")
    assert menu.inline_keyboard[0][0].text == bundled().t("ru", "user.button.menu")
