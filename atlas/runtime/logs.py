"""Structured JSON logging that never blocks the trio scheduler.

Why a queue: writing to stdout or a pipe can block when the reader is slow (journald under load, a
full terminal buffer), and a blocked write inside a trio task blocks every task. Log calls only put
the record on a bounded in-memory queue; one listener thread outside trio does the writing. When the
queue is full, records are dropped and counted rather than blocking the scheduler, and the count is
reported with the next record that gets through and in ``/status``.

Records are rendered as one JSON object per line by structlog's processors, for stdlib loggers and
structlog loggers alike.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
from typing import Any, TextIO

import structlog

_DEFAULT_QUEUE_SIZE = 10_000


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

    def __init__(self, handler: DroppingQueueHandler, listener: logging.handlers.QueueListener) -> None:
        self.handler = handler
        self.listener = listener

    def stop(self) -> None:
        """Stop the listener thread after it has written everything already queued."""
        self.listener.stop()
        logging.getLogger().removeHandler(self.handler)


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
    return LogPipeline(handler, listener)
