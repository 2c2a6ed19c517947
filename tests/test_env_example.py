"""``.env.example`` lists every setting, and only settings, and its defaults load as they stand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from atlas.runtime.settings import PREFIX, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"
_LINE = re.compile(r"^#?\s*(ATLAS_[A-Z0-9_]+)=(.*)$")


def _entries() -> dict[str, tuple[str, bool]]:
    found: dict[str, tuple[str, bool]] = {}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = _LINE.match(line.strip())
        if match:
            found[match.group(1)] = (match.group(2), not line.startswith("#"))
    return found


def test_every_setting_is_in_the_example_and_nothing_else() -> None:
    names = {PREFIX + field.upper() for field in Settings.model_fields}
    listed = set(_entries())
    assert sorted(names - listed) == [], "settings missing from .env.example"
    assert sorted(listed - names) == [], ".env.example lists variables that are not settings"


def test_the_uncommented_values_load_as_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {name: value for name, (value, active) in _entries().items() if active}
    assert values, "the example sets nothing"
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    from_example = load_settings()
    for name in values:
        monkeypatch.delenv(name)
    defaults = load_settings()
    assert from_example == defaults  # the example documents the defaults, it does not change them
