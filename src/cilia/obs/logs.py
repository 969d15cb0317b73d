"""Process logging: text for people, JSON lines for log pipelines (`--log-format text|json`).

A log call names what it is about with `extra={"proxy_id": ..., "object": ...}`; the JSON format turns
those into fields of their own so that a pipeline can filter by proxy or object without parsing text.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# `extra` keys a log call may set; each becomes a JSON field (text: appended as key=value).
CONTEXT_FIELDS = ("proxy_id", "object")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = record.__dict__.get(key)
            if value is not None and value != "":
                out[key] = str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, with the context fields appended as `key=value`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [f"{k}={record.__dict__[k]}" for k in CONTEXT_FIELDS if record.__dict__.get(k) not in (None, "")]
        if not context:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the first line
        return f"{head} [{' '.join(context)}]{sep}{tail}"


def configure_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Set the root logger's level and format (replacing earlier handlers)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level.upper())
    root.setLevel(numeric)


__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure_logging"]
