"""Logging to stderr only (in stdio mode stdout is the MCP wire), every record redacted.

The one handler is the chokepoint: its formatter redacts each emitted record's final message and
exception text, whoever logged it (guard, the MCP SDK, httpx, uvicorn, APScheduler), in both formats.
Records below the level are never formatted, so the redactor costs nothing on the hot path. Uncaught
exceptions and warnings are routed through the same handler.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal

from guard.redact import redact

LogFormat = Literal["text", "json"]

# Libraries that print whole messages and URLs at DEBUG and are chatty at INFO.
LIBRARIES = ("mcp", "httpx", "httpx2", "uvicorn.access", "apscheduler")


class RedactingFormatter(logging.Formatter):
    """`guard LEVEL logger: message` (then the traceback), secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        message, details = self.redacted(record)
        line = f"guard {record.levelname} {record.name}: {message}"
        return f"{line}\n{details}" if details else line

    def redacted(self, record: logging.LogRecord) -> tuple[str, str]:
        """The record's message, and its traceback and stack (empty if none), both redacted."""
        details = []
        if record.exc_info:
            details.append(self.formatException(record.exc_info))
        elif record.exc_text:
            details.append(record.exc_text)
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        return redact(record.getMessage()), redact("\n".join(details))


class JsonFormatter(RedactingFormatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        message, details = self.redacted(record)
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        if details:
            entry["exception"] = details
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "info", fmt: LogFormat = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else RedactingFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The libraries' noise only at --log-level debug (where the redactor makes their messages safe).
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    """A crash's traceback goes through the redacting handler, not straight to stderr."""
    logging.getLogger("guard").critical("uncaught %s", kind.__name__, exc_info=(kind, error, trace))
