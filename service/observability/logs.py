"""Structured (JSON-lines) logging; every line carries the current request id, and its trace
id while tracing is on."""

from __future__ import annotations

import contextvars
import logging
import sys
import time

import orjson

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
#: The current request's trace id (32 hex digits) while tracing is on; None otherwise.
trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)
# the record's own attributes, uvicorn's ANSI-coloured duplicate of the message, and the
# text formatter's request id (with its trace id) when a record goes through both formatters
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "color_message",
    "request_id",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": request_id.get(),
        }
        trace = trace_id.get()
        if trace is not None:
            line["trace_id"] = trace
        line["msg"] = record.getMessage()
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        trace = trace_id.get()
        rid = request_id.get()
        record.request_id = rid if trace is None else f"{rid} trace={trace}"
        return super().format(record)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    for name in ("nnserve", "modelrepo", "uvicorn", "uvicorn.error", "gunicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
