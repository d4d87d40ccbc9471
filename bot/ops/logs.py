"""Logging setup: the classic text lines, or JSON lines (``log_format = "json"``) for log collectors.

A JSON line holds the time, level, logger and message, the request and channel ids of the message being answered (set
by the chat service with ``log_context``; tasks and threads started while answering inherit them), and any ``extra``
fields. Message bodies never appear at INFO: the modules log ids, lengths and durations only.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from bot.masking import MaskCredentials

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "hanbot_log_context", default=None
)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
CHATTY = ("httpx", "httpcore", "apscheduler.executors")  # one line per request or job is noise


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Add ``fields`` (request, channel...) to every log line written inside, in this task and those it starts."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context.get() or {})
        line.update(
            {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        )
        if record.exc_info:  # exc_text: the traceback as a filter left it (credentials masked)
            line["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(MaskCredentials())  # a URL with a password never reaches a log line
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for chatty in CHATTY:
        logging.getLogger(chatty).setLevel(logging.WARNING)
