"""The parameters of one Bot API call, decoded the way Telegram decodes them.

Telegram accepts a call's parameters as a query string, ``application/x-www-form-urlencoded``,
``application/json`` or ``multipart/form-data``. aiogram sends urlencoded forms, or multipart when a
file is attached; every value is a string: strings as they are, everything else JSON-encoded
(``true``, ``5``, nested objects as JSON text), ``None`` dropped. A file travels as its own part and
the parameter says ``attach://<part name>``. A JSON body is normalised to the same string form here
so that each method sees one shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from atlas.testing.botapi.errors import bad_request


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """A file part of a multipart call, fully read (the size was bounded before reading)."""

    filename: str | None
    content_type: str | None
    data: bytes


class Params:
    """Typed access to a call's fields; every accessor raises a 400 ``ApiError`` on bad input."""

    def __init__(self, fields: Mapping[str, str], files: Mapping[str, UploadedFile] | None = None) -> None:
        self._fields = dict(fields)
        self._files = dict(files or {})

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Params:
        """Normalise a JSON body: strings stay, None is dropped, the rest becomes JSON text."""
        fields = {
            key: value if isinstance(value, str) else json.dumps(value)
            for key, value in body.items()
            if value is not None
        }
        return cls(fields)

    def fields(self) -> dict[str, str]:
        """A copy of the string fields (files excluded)."""
        return dict(self._fields)

    def has(self, name: str) -> bool:
        """Whether the field was sent (files included)."""
        return name in self._fields or name in self._files

    def raw(self, name: str) -> str | None:
        """The field exactly as sent, or None."""
        return self._fields.get(name)

    def get_str(self, name: str) -> str | None:
        """A string field, or None when absent."""
        return self._fields.get(name)

    def need_str(self, name: str, missing: str | None = None) -> str:
        """A required, non-empty string field; else a 400 saying ``missing`` (or "<name> is empty")."""
        value = self._fields.get(name)
        if not value:
            raise bad_request(missing or f"{name} is empty")
        return value

    def get_int(self, name: str) -> int | None:
        """An integer field (JSON number or decimal string), or None when absent."""
        value = self._fields.get(name)
        if value is None or value == "":
            return None
        try:
            return int(value)
        except ValueError:
            raise bad_request(f"invalid {name} specified") from None

    def need_int(self, name: str) -> int:
        """A required integer field."""
        value = self.get_int(name)
        if value is None:
            raise bad_request(f"{name} is empty")
        return value

    def get_bool(self, name: str, *, required: bool = False) -> bool:
        """A boolean field: ``true``/``false`` (also ``1``/``0``, as Telegram accepts)."""
        value = self._fields.get(name)
        if value is None:
            if required:
                raise bad_request(f"parameter \"{name}\" is required")
            return False
        lowered = value.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0", ""):
            return False
        raise bad_request(f"invalid {name} specified")

    def get_json(self, name: str) -> Any:
        """A JSON-encoded field (markup, prices, commands), decoded; None when absent."""
        value = self._fields.get(name)
        if value is None or value == "":
            return None
        try:
            return json.loads(value)
        except ValueError:
            raise bad_request(f"can't parse {name} JSON object") from None

    def chat_id(self) -> int | str:
        """``chat_id`` as Telegram reads it: an integer or an ``@username``."""
        value = self._fields.get("chat_id")
        if not value:
            raise bad_request("chat_id is empty")
        if value.startswith("@"):
            return value
        try:
            return int(value)
        except ValueError:
            raise bad_request("chat not found") from None

    def file(self, name: str) -> UploadedFile | str | None:
        """A file field: the uploaded part (resolving ``attach://``), or the file_id/URL string."""
        if name in self._files:
            return self._files[name]
        value = self._fields.get(name)
        if value is None or value == "":
            return None
        if value.startswith("attach://"):
            part = value.removeprefix("attach://")
            if part not in self._files:
                raise bad_request(f"wrong HTTP URL specified: attached file part {part!r} is missing")
            return self._files[part]
        return value
