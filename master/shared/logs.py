"""Logs for both daemons: one structured event a line, JSON off a TTY, cheap on a hot path.

A registration is logged, so a log line sits on the PUT path: it must cost a few
microseconds, not tens. So the JSON is written by msgspec (the project's one JSON library),
the timestamp's seconds are formatted once per second, and lines are written in batches:
every line logged while the event loop runs one round goes out in one `write` at the end of
that round (at once where no loop runs, and at exit). A line is never held longer than
that round; SIGKILL can lose at most that round's lines.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import msgspec
import structlog

FLUSH_BYTES: Final = 1 << 16  # a round that logs more than this writes as it goes


class BatchedWriter:
    """A file-like sink for structlog's BytesLogger that writes once per loop round."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._chunks: list[bytes] = []
        self._size = 0
        self._scheduled = False
        atexit.register(self.flush)

    def write(self, line: bytes) -> None:
        self._chunks.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
            return
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._chunks:
            return
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        buffer = getattr(self._stream, "buffer", None)
        try:
            if buffer is not None:
                buffer.write(data)
                buffer.flush()
            else:
                self._stream.write(data.decode("utf-8", "replace"))
                self._stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed or full: a log line must never take the daemon down


class _Timestamp:
    """`timestamp` in UTC ISO 8601 with microseconds, its seconds formatted once."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(
        self, logger: Any, name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._text}.{int((now - second) * 1e6):06d}Z"
        return event


class LineLogger:
    """structlog's logger for rendered JSON lines: each goes to the batched writer as it is
    (structlog's BytesLogger adds a second newline and flushes after every line, which
    would undo the batching)."""

    __slots__ = ("_writer",)

    def __init__(self, writer: BatchedWriter) -> None:
        self._writer = writer

    def msg(self, message: bytes) -> None:
        self._writer.write(message)

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg


def _line_loggers(writer: BatchedWriter) -> Any:
    """structlog's logger factory: one shared writer, whatever name a logger is got by."""
    logger = LineLogger(writer)
    return lambda *args: logger


_ENCODER: Final = msgspec.json.Encoder()


def _json_line(logger: Any, name: str, event: MutableMapping[str, Any]) -> bytes:
    try:
        return _ENCODER.encode(event) + b"\n"
    except (TypeError, UnicodeEncodeError, OverflowError):  # a value msgspec cannot write
        safe = {
            key: value if isinstance(value, str | int | float | bool | None) else repr(value)
            for key, value in event.items()
        }
        return msgspec.json.encode(safe, enc_hook=repr) + b"\n"


def configure_logging(log_format: str | None = None, level: int = logging.INFO) -> None:
    """`log_format` is "json", "console" or None (decide by whether stderr is a TTY)."""
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _Timestamp(),
        structlog.processors.format_exc_info,
    ]
    if log_format == "json":
        structlog.configure(
            processors=[*shared, _json_line],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=_line_loggers(BatchedWriter(sys.stderr)),
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(
            processors=[*shared, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=True,
        )
    # aiohttp's access log is noise at this rate; its errors still reach stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")


class Budget:
    """At most `per_second` lines of one kind a second; past that, one summary line a
    second says how many were left out. A storm of registrations (or of one error) then
    costs the log a line a second, not a line an event, and the PUT path nothing more.

        if budget.spend():
            log.info("service_registered", ...)
    """

    def __init__(self, logger: Any, event: str, per_second: int) -> None:
        self._log = logger
        self._event = event
        self._per_second = per_second
        self._second = -1
        self._spent = 0
        self._dropped = 0
        self._summary: asyncio.TimerHandle | None = None

    def spend(self) -> bool:
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._spent = second, 0
        self._spent += 1
        if self._spent <= self._per_second:
            return True
        self._dropped += 1
        if self._summary is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False
            self._summary = loop.call_later(1.0, self._say_dropped)
        return False

    def _say_dropped(self) -> None:
        self._summary = None
        dropped, self._dropped = self._dropped, 0
        if dropped:
            self._log.info(
                f"{self._event}_summarized", left_out=dropped, limit_per_second=self._per_second
            )

    def close(self) -> None:
        """Say what was left out now (at shutdown), instead of in up to a second."""
        if self._summary is not None:
            self._summary.cancel()
            self._say_dropped()
