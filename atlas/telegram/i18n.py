"""Texts in locale files: ``t(lang, key, **params)`` with a fallback language.

Locale files are TOML, one per language, in ``atlas/telegram/locales/<lang>.toml``. Tables nest
keys, so ``[errors] apology = "..."`` is the key ``errors.apology``. Every text is Telegram HTML
(send it with ``parse_mode="HTML"``); placeholders are ``{name}`` (letters, digits, ``_``), and
``{{`` / ``}}`` are literal braces. Nothing else of ``str.format`` exists here — no attribute
access, no format specs — because a locale file is data, not code.

Parameters are HTML-escaped when substituted, so a user's name cannot break the markup or inject a
link; wrap a value in :class:`Markup` when it is HTML on purpose (a link built by code). A parameter
that is a ``datetime`` or a :class:`~atlas.telegram.formatting.Money` is formatted for the text's
language (and the deployment's timezone, :class:`~atlas.telegram.formatting.Formats`) by
:mod:`atlas.telegram.formatting`: callers pass values, never pre-formatted dates or amounts.

Completeness is a test, not a hope: :func:`check_catalogs` lists every key missing from a locale and
every key whose placeholder set differs between locales; ``tests/test_i18n.py`` fails on any.

Errors::

    LocaleError                  a locale file or catalog is malformed (raised at load time)
    TranslationError             base of the lookup errors below; also a LookupError
    ├── MissingTranslation       the key exists in no locale (a typo or a forgotten text)
    └── MissingParameter         the text has a placeholder the caller did not pass
"""

from __future__ import annotations

import html
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from atlas.telegram.formatting import Formats, format_value

DEFAULT_LANGUAGE = "ru"
"""What a user with no known language gets (the ``users.language`` column default)."""
FALLBACK_LANGUAGE = "en"
"""Where a key missing from a user's locale is looked up (the completeness test keeps this rare)."""

# Client languages close enough to Russian that the Russian texts serve them better than English.
_RUSSIAN_READERS = frozenset({"ru", "uk", "be", "kk", "ky", "uz", "tg"})

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|\{|\}")
_KEY = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


class LocaleError(ValueError):
    """A locale file or catalog is malformed; the message names the file (language) and the key."""


class TranslationError(LookupError):
    """Base of the errors :meth:`Translator.t` raises for a text that cannot be produced."""


class MissingTranslation(TranslationError):
    """``key`` exists in no locale (neither the requested nor the fallback language)."""

    def __init__(self, key: str, language: str) -> None:
        self.key = key
        self.language = language
        super().__init__(f"no text for key {key!r} in {language!r} or the fallback")


class MissingParameter(TranslationError):
    """The text of ``key`` needs the placeholder ``name`` and the caller did not pass it."""

    def __init__(self, key: str, name: str) -> None:
        self.key = key
        self.name = name
        super().__init__(f"text {key!r} needs the parameter {name!r}")


class Markup(str):
    """A string that is already HTML: :meth:`Translator.t` substitutes it without escaping."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Text:
    """One parsed text: the template and its placeholder names."""

    template: str
    placeholders: frozenset[str]

    def render(
        self,
        key: str,
        params: Mapping[str, object],
        format_param: Callable[[object], str | None] | None = None,
    ) -> str:
        """Substitute ``params`` (HTML-escaped unless :class:`Markup`); extra params are ignored.

        ``format_param`` turns a typed value (a time, an amount) into its text, or returns None for
        a value it does not format (then ``str(value)`` is used).
        """

        def substitute(match: re.Match[str]) -> str:
            token = match.group(0)
            if token == "{{":
                return "{"
            if token == "}}":
                return "}"
            name = match.group(1)
            if name not in params:
                raise MissingParameter(key, name)
            value = params[name]
            if isinstance(value, Markup):
                return str(value)
            shown = format_param(value) if format_param is not None else None
            return html.escape(str(value) if shown is None else shown, quote=False)

        return _TOKEN.sub(substitute, self.template)


def parse_text(language: str, key: str, template: str) -> Text:
    """Parse ``template``; :class:`LocaleError` on a stray brace or a malformed placeholder."""
    names: set[str] = set()
    for match in _TOKEN.finditer(template):
        token = match.group(0)
        if token in ("{", "}"):
            raise LocaleError(
                f"{language}: {key}: stray {token!r} at {match.start()} (placeholders are {{name}}, "
                "literal braces are {{ and }})"
            )
        if match.group(1):
            names.add(match.group(1))
    return Text(template, frozenset(names))


def flatten(language: str, table: Mapping[str, Any], prefix: str = "") -> dict[str, Text]:
    """Turn nested TOML tables into ``{"a.b": Text}``; every leaf must be a string."""
    out: dict[str, Text] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if not _KEY.match(key):
            raise LocaleError(f"{language}: key {key!r} must be dotted lower_snake_case")
        if isinstance(value, Mapping):
            out.update(flatten(language, value, f"{key}."))
        elif isinstance(value, str):
            if not value.strip():
                raise LocaleError(f"{language}: {key}: empty text")
            out[key] = parse_text(language, key, value)
        else:
            raise LocaleError(f"{language}: {key}: expected a string or a table, got {type(value).__name__}")
    return out


@dataclass(frozen=True, slots=True)
class CatalogProblem:
    """One completeness problem: ``key`` is ``missing`` in ``language`` or its ``placeholders`` differ."""

    language: str
    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.language}: {self.key}: {self.problem}"


def check_catalogs(catalogs: Mapping[str, Mapping[str, Text]]) -> list[CatalogProblem]:
    """Every key missing from some locale, and every placeholder set that differs between locales.

    Placeholders are compared with the first language in sorted order that has the key. Pure; an
    empty list means complete.
    """
    problems: list[CatalogProblem] = []
    languages = sorted(catalogs)
    every_key = sorted({key for catalog in catalogs.values() for key in catalog})
    for key in every_key:
        having = [lang for lang in languages if key in catalogs[lang]]
        reference_lang = having[0]
        reference = catalogs[reference_lang][key].placeholders
        for lang in languages:
            text = catalogs[lang].get(key)
            if text is None:
                problems.append(CatalogProblem(lang, key, "missing"))
            elif text.placeholders != reference:
                problems.append(
                    CatalogProblem(
                        lang,
                        key,
                        f"placeholders {sorted(text.placeholders)} differ from {reference_lang}'s "
                        f"{sorted(reference)}",
                    )
                )
    return problems


_PLAIN_TEXTS_KEPT = 4096  # rendered parameterless texts a Translator keeps (see Translator.t)


class Translator:
    """The loaded catalogs, by language. Immutable after construction; share one per process."""

    def __init__(
        self,
        catalogs: Mapping[str, Mapping[str, Text]],
        *,
        default: str = DEFAULT_LANGUAGE,
        fallback: str = FALLBACK_LANGUAGE,
        formats: Formats | None = None,
    ) -> None:
        for name, lang in (("default", default), ("fallback", fallback)):
            if lang not in catalogs:
                raise LocaleError(f"{name} language {lang!r} has no catalog (have {sorted(catalogs)})")
        self._catalogs = {lang: dict(texts) for lang, texts in catalogs.items()}
        self.default = default
        self.fallback = fallback
        self.formats = formats or Formats()
        # Texts without parameters, rendered: (language as asked, key) -> text. A button label or a
        # static screen is asked for on nearly every update; the catalogs never change, so its
        # rendering (a regex pass, HTML escaping) is done once. Bounded: ``language`` comes from
        # users (Telegram's language codes), so the keys are not a closed set.
        self._plain: dict[tuple[str | None, str], str] = {}

    @classmethod
    def from_toml(cls, sources: Mapping[str, str], **options: Any) -> Translator:
        """Build from TOML texts by language; :class:`LocaleError` names the file and the problem."""
        catalogs: dict[str, dict[str, Text]] = {}
        for lang, source in sources.items():
            try:
                table = tomllib.loads(source)
            except tomllib.TOMLDecodeError as exc:
                raise LocaleError(f"{lang}: not valid TOML: {exc}") from exc
            catalogs[lang] = flatten(lang, table)
        return cls(catalogs, **options)

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages with a catalog, sorted."""
        return tuple(sorted(self._catalogs))

    @property
    def catalogs(self) -> Mapping[str, Mapping[str, Text]]:
        """The catalogs (for :func:`check_catalogs`)."""
        return self._catalogs

    def has(self, key: str) -> bool:
        """True when some locale has ``key``."""
        return any(key in catalog for catalog in self._catalogs.values())

    def language_for(self, code: str | None) -> str:
        """The locale to use for a stored language or a Telegram ``language_code`` (``"en-US"``).

        A supported language is used as is; languages whose readers mostly read Russian map to
        ``ru``; any other known code gets English; no code at all gets the default.
        """
        if not code:
            return self.default
        base = code.split("-", 1)[0].split("_", 1)[0].lower()
        if base in self._catalogs:
            return base
        if base in _RUSSIAN_READERS and "ru" in self._catalogs:
            return "ru"
        return self.fallback

    def t(self, language: str | None, key: str, /, **params: object) -> str:
        """The text ``key`` in ``language`` (falling back), with ``params`` substituted.

        Raises :class:`MissingTranslation` for a key no locale has and :class:`MissingParameter`
        when a placeholder is not given: both are programming errors, never shown to users.
        """
        if params:
            return self._render(language, key, params)
        memo = (language, key)
        shown = self._plain.get(memo)
        if shown is None:
            shown = self._render(language, key, params)
            if len(self._plain) < _PLAIN_TEXTS_KEPT:
                self._plain[memo] = shown
        return shown

    def _render(self, language: str | None, key: str, params: Mapping[str, object]) -> str:
        lang = self.language_for(language)
        text = self._catalogs[lang].get(key) or self._catalogs[self.fallback].get(key)
        if text is None:
            raise MissingTranslation(key, lang)
        return text.render(key, params, lambda value: format_value(value, lang, self.formats))


def bundled_sources(languages: Iterable[str] | None = None) -> dict[str, str]:
    """The TOML text of every locale file shipped in ``atlas/telegram/locales`` (or of ``languages``)."""
    folder = resources.files("atlas.telegram").joinpath("locales")
    wanted = None if languages is None else set(languages)
    sources: dict[str, str] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".toml"):
            continue
        lang = entry.name.removesuffix(".toml")
        if wanted is None or lang in wanted:
            sources[lang] = entry.read_text(encoding="utf-8")
    return sources


_bundled: Translator | None = None
_bundled_formats = Formats()


def bundled() -> Translator:
    """The translator of the shipped locale files, loaded once (:class:`LocaleError` if malformed)."""
    global _bundled
    if _bundled is None:
        _bundled = Translator.from_toml(bundled_sources(), formats=_bundled_formats)
    return _bundled


def configure_bundled(formats: Formats) -> None:
    """Make :func:`bundled` format times with ``formats`` (the runtime calls it once at start,
    from ``ATLAS_TIMEZONE``). One process serves one deployment, so one setting for all texts."""
    global _bundled, _bundled_formats
    _bundled_formats = formats
    _bundled = None


def t(language: str | None, key: str, /, **params: object) -> str:
    """:meth:`Translator.t` on the shipped locale files."""
    return bundled().t(language, key, **params)
