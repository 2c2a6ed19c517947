"""Locale files: complete in every language, same placeholders everywhere, and ``t()`` behaves."""

from __future__ import annotations

import pytest

from atlas.telegram import i18n
from atlas.telegram.i18n import (
    LocaleError,
    Markup,
    MissingParameter,
    MissingTranslation,
    Translator,
    bundled,
    bundled_sources,
    check_catalogs,
)

SHIPPED = bundled_sources()


def test_ru_and_en_are_shipped() -> None:
    assert {"ru", "en"} <= set(SHIPPED)


def test_every_key_exists_in_every_locale_with_the_same_placeholders() -> None:
    translator = Translator.from_toml(SHIPPED)
    problems = check_catalogs(translator.catalogs)
    assert problems == [], "locale problems:\n" + "\n".join(map(str, problems))


def test_every_shipped_text_renders_in_every_language() -> None:
    translator = bundled()
    for language, catalog in translator.catalogs.items():
        for key, text in catalog.items():
            rendered = translator.t(language, key, **{name: f"<{name}>" for name in text.placeholders})
            assert rendered.strip(), (language, key)
            for name in text.placeholders:
                assert f"&lt;{name}&gt;" in rendered, (language, key, name)


def test_the_check_finds_a_missing_key_and_differing_placeholders() -> None:
    broken = Translator.from_toml(
        {
            "ru": 'a = "привет, {name}"\n[menu]\nbuy = "Купить {plan}"\nonly_ru = "x"',
            "en": 'a = "hello, {user}"\n[menu]\nbuy = "Buy {plan}"',
        },
        default="ru",
        fallback="en",
    )
    problems = {(p.language, p.key, p.problem.split(" ", 1)[0]) for p in check_catalogs(broken.catalogs)}
    assert problems == {("ru", "a", "placeholders"), ("en", "menu.only_ru", "missing")}


def test_t_substitutes_escapes_and_falls_back() -> None:
    translator = Translator.from_toml(
        {
            "ru": 'hi = "Привет, <b>{name}</b>! {{literal}}"',
            "en": 'hi = "Hi, <b>{name}</b>! {{literal}}"\nonly_en = "English only"',
        }
    )
    assert translator.t("en", "hi", name="<script>&") == "Hi, <b>&lt;script&gt;&amp;</b>! {literal}"
    assert translator.t("ru", "hi", name=Markup("<i>Ann</i>")) == "Привет, <b><i>Ann</i></b>! {literal}"
    assert translator.t("ru", "only_en") == "English only"  # missing in ru: the fallback's text
    assert translator.t(None, "hi", name="x").startswith("Привет")  # no language: the default
    assert translator.t("en-US", "hi", name="x").startswith("Hi")
    assert translator.t("uk", "hi", name="x").startswith("Привет")
    assert translator.t("de", "hi", name="x").startswith("Hi")
    with pytest.raises(MissingTranslation, match="nope"):
        translator.t("en", "nope")
    with pytest.raises(MissingParameter, match="'name'"):
        translator.t("en", "hi")


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ('a = "stray { brace"', "stray '{'"),
        ('a = "bad {0} placeholder"', "stray '{'"),
        ('a = "attr {user.name}"', "stray '{'"),
        ('a = "   "', "empty text"),
        ("a = 3", "expected a string"),
        ('Bad-Key = "x"', "dotted lower_snake_case"),
        ("a = ", "not valid TOML"),
    ],
)
def test_malformed_locale_files_are_refused_at_load(source: str, fragment: str) -> None:
    with pytest.raises(LocaleError, match="en") as caught:
        Translator.from_toml({"en": source, "ru": 'x = "y"'})
    assert fragment in str(caught.value)


def test_module_level_t_uses_the_shipped_files() -> None:
    assert i18n.t("en", "errors.apology").startswith("Sorry")
    assert i18n.t("ru", "errors.apology").startswith("Извините")
    assert "a&lt;b" in i18n.t("en", "errors.banned", support="a<b")
