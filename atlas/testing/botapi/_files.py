"""The bytes of the files a bot uploaded, kept (bounded) so that the web chat can show them.

Telegram keeps every file; the emulator keeps the newest ones up to a total size and forgets the
oldest first, because a long demo or a load test uploads far more than anybody looks at. A file
sent by URL or forgotten here is still known by its ``file_id`` (:class:`FileMeta`), only its bytes
are gone.
"""

from __future__ import annotations

import mimetypes
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
"""The total kept: thousands of QR codes (a few KB each), a handful of large documents."""

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass(frozen=True, slots=True)
class StoredFile:
    """An uploaded file's bytes and the content type they are served with."""

    data: bytes
    content_type: str


def content_type_of(data: bytes, declared: str | None, filename: str | None) -> str:
    """The type to serve ``data`` as: the bytes' own signature first, then what the bot declared,
    then the file name's extension; ``application/octet-stream`` when nothing says more.

    aiogram declares ``application/octet-stream`` for every upload, so the declaration alone would
    make every QR code a download.
    """
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if declared and declared.lower() != "application/octet-stream":
        return declared.lower()
    guessed, _ = mimetypes.guess_type(filename or "")
    return guessed or "application/octet-stream"


class FileStore:
    """Uploaded bytes by ``file_id``, at most ``max_bytes`` in total (oldest forgotten first)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes!r}")
        self._max_bytes = max_bytes
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._size = 0

    def put(self, file_id: str, data: bytes, content_type: str) -> None:
        """Keep ``data`` under ``file_id``; a file larger than the whole store is not kept."""
        if len(data) > self._max_bytes:
            return
        old = self._files.pop(file_id, None)
        if old is not None:
            self._size -= len(old.data)
        self._files[file_id] = StoredFile(data, content_type)
        self._size += len(data)
        while self._size > self._max_bytes:
            _, evicted = self._files.popitem(last=False)
            self._size -= len(evicted.data)

    def get(self, file_id: str) -> StoredFile | None:
        """The kept bytes of ``file_id``, or None (never uploaded, sent by URL, or forgotten)."""
        return self._files.get(file_id)

    @property
    def size(self) -> int:
        """Bytes kept right now."""
        return self._size
