"""structlog set-up for both daemons: console on a TTY, JSON lines otherwise.

The sidecar imports this module too (besides `master.model`): both daemons log the same way.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(log_format: str | None = None, level: int = logging.INFO) -> None:
    """`log_format` is "json", "console" or None (decide by whether stderr is a TTY)."""
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiohttp's access log is noise at this rate; its errors still reach stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
