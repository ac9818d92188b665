"""JSON-lines logging: one line per event with service, request id and trace id."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

from libs.context import get_request_id

# the app a line comes from when several share a process (deploy/local/apps.py)
_serving: contextvars.ContextVar[str | None] = contextvars.ContextVar("serving", default=None)


def log_as(app: str) -> None:
    """Lines logged from now on in this context (and the tasks it starts) name ``app``."""
    _serving.set(app)


@contextlib.contextmanager
def serving(app: str) -> Iterator[None]:
    """Lines logged in this context (and the tasks it starts) name ``app``."""
    token = _serving.set(app)
    try:
        yield
    finally:
        _serving.reset(token)


_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object per line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": _serving.get() or self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or get_request_id()
        if rid:
            payload["request_id"] = rid
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            payload["trace_id"] = format(span.trace_id, "032x")
            payload["span_id"] = format(span.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_") and key not in payload:
                payload[key] = value
        if record.exc_info:
            payload["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            payload["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        return orjson.dumps(payload, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines for local development when LOG_JSON=false."""

    def format(self, record: logging.LogRecord) -> str:
        rid = get_request_id()
        base = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        app = _serving.get()
        if app:
            base = f"[{app}] {base}"
        if rid:
            base += f" [rid={rid}]"
        if record.exc_info:
            base += "\n" + "".join(traceback.format_exception(*record.exc_info))
        return base


def configure_logging(service: str, level: str = "INFO", json_lines: bool = True) -> None:
    """Route every logger (including uvicorn's and arq's) to one stdout handler."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service) if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "arq", "arq.worker"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # access lines are emitted by our own middleware with request ids; uvicorn's are redundant
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request it sends at INFO ("HTTP Request: GET .../ready 200"): a line per
    # readiness poll, OpenAPI fetch and upstream call, none with anything our own lines lack
    # (LOG_LEVEL=DEBUG keeps them)
    debug = root.level <= logging.DEBUG
    logging.getLogger("httpx").setLevel(logging.NOTSET if debug else logging.WARNING)
