"""Structured JSON logging that never blocks the trio scheduler.

Why a queue: writing to stdout or a pipe can block when the reader is slow (journald under load, a
full terminal buffer), and a blocked write inside a trio task blocks every task. Log calls only put
the record on a bounded in-memory queue; one listener thread outside trio does the writing. When the
queue is full, records are dropped and counted rather than blocking the scheduler, and the count is
reported with the next record that gets through and in ``/status``.

Records are rendered as one JSON object per line by structlog's processors, for stdlib loggers and
structlog loggers alike. Python warnings (aiogram's "unknown update type", deprecations) become
records too, shortened to their first line: aiogram's warning would otherwise print the whole
update, a user's message included, as a multi-line non-JSON block on stderr.

What is kept out of the log (see ``docs/security.md``):

* httpx's and httpcore's per-request INFO lines are off at every level: their URLs hold what Atlas
  must never log, a user's VPN UUID (the node agent's ``/v1/users/<uuid>``) and the bot token
  (``/bot<token>/<method>``).
* As a last line of defence, the writer masks every UUID (``<uuid>``) and every Bot API token
  (``bot<redacted>``) in every rendered field, exception text included, whoever logged it.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import re
import sys
import warnings
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

_DEFAULT_QUEUE_SIZE = 10_000

# Loggers whose INFO lines carry request URLs (credentials in the path): warnings and up only.
_URL_LOGGERS = ("httpx", "httpcore", "hpack")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_BOT_TOKEN = re.compile(r"bot\d{3,}:[A-Za-z0-9_-]{10,}")
_UPDATE_ID = re.compile(r'"update_id"\s*:\s*(\d+)')
_warnings_log = logging.getLogger("atlas.warnings")


def redact(text: str) -> str:
    """``text`` with every UUID and Bot API token masked."""
    return _BOT_TOKEN.sub("bot<redacted>", _UUID.sub("<uuid>", text))


def _redacted(value: Any) -> Any:
    """``value`` with secrets masked in every string it holds; structure (lists, dicts) kept."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, int | float | bool):
        return value
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    text = str(value)  # a path, a datetime, an exception: left to the renderer unless it leaks
    masked = redact(text)
    return value if masked == text else masked


def _redact_event(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets in every field (after exceptions are formatted)."""
    for key, value in event.items():
        event[key] = _redacted(value)
    return event


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` replacement: one short log record, never the warning's payload."""
    text = str(message)
    first = text.strip().splitlines()[0] if text.strip() else category.__name__
    extra: dict[str, Any] = {"category": category.__name__, "source": f"{filename}:{lineno}"}
    update = _UPDATE_ID.search(text)
    if update is not None:
        extra["update_id"] = int(update.group(1))
    _warnings_log.warning("%s", first[:300], extra=extra)


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A queue handler that drops (and counts) records instead of blocking when the queue is full."""

    def __init__(self, log_queue: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(log_queue)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Pass the record through unformatted: the writer thread formats it.

        The stdlib version formats here and flattens structlog's event dict into a string, which
        would lose every structured field.
        """
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        """Put without blocking; count the record as dropped if there is no room."""
        if self.dropped:
            record.dropped_before = self.dropped
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
        else:
            if hasattr(record, "dropped_before"):
                self.dropped = 0


class LogPipeline:
    """The installed handler and listener; :meth:`stop` flushes what is queued."""

    def __init__(
        self,
        handler: DroppingQueueHandler,
        listener: logging.handlers.QueueListener,
        previous_showwarning: Callable[..., None] | None = None,
    ) -> None:
        self.handler = handler
        self.listener = listener
        self.previous_showwarning = previous_showwarning

    def stop(self) -> None:
        """Stop the listener thread after it has written everything already queued."""
        self.listener.stop()
        logging.getLogger().removeHandler(self.handler)
        if warnings.showwarning is _log_warning and self.previous_showwarning is not None:
            warnings.showwarning = self.previous_showwarning


def _shared_processors() -> list[Any]:
    return [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(
    level: str = "INFO",
    fmt: str = "json",
    *,
    stream: TextIO | None = None,
    queue_size: int = _DEFAULT_QUEUE_SIZE,
) -> LogPipeline:
    """Route every stdlib and structlog record through a bounded queue to one writer thread."""
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
    )
    output = logging.StreamHandler(stream if stream is not None else sys.stderr)
    output.setFormatter(formatter)

    log_queue: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=queue_size)
    handler = DroppingQueueHandler(log_queue)
    listener = logging.handlers.QueueListener(log_queue, output, respect_handler_level=False)

    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, DroppingQueueHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _URL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    previous_showwarning = warnings.showwarning
    warnings.showwarning = _log_warning
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    listener.start()
    return LogPipeline(handler, listener, previous_showwarning)
