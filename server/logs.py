"""JSON logs, one object per line, each carrying the id of the request it belongs to."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import time as time_module
from datetime import UTC, datetime
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# One encoder for every access line: json.dumps with an argument builds a new one per call.
_encode = json.JSONEncoder(default=str).encode

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class MalformedRequestFilter(logging.Filter):
    """A malformed request (an over-long header, bad HTTP) is refused by aiohttp with a 400 before the app sees it;
    aiohttp logs that as an error with a traceback. It is the client's mistake: one INFO line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "aiohttp.server" and record.exc_info:
            exc = record.exc_info[1]
            if isinstance(exc, HttpProcessingError) and exc.code == 400:
                record.levelno, record.levelname = logging.INFO, "INFO"
                record.msg, record.args, record.exc_info = "malformed request refused: %s", (exc.message,), None
        return True


def configure_logging(level: str) -> None:
    """Send every logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(MalformedRequestFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class AccessLogger(AbstractAccessLogger):
    """One JSON line per request; the path only, never the query string, which may carry secrets.

    The line is the one JsonFormatter would write for the record, but made here and written in batches: through a
    LogRecord, the formatter's walk over its attributes and a flush per line, each request paid about 30 µs. Lines
    wait for the end of the event loop's current pass, then go out in one write to the stream of the root logger's
    handler (configure_logging's), under its lock. With other handlers (a host application's), the record goes
    through logging as usual.
    """

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._handler = _stream_handler(logger)
        self._pending: list[str] = []
        self._second = -1
        self._second_text = ""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        method, path, status = request.method, request.path, response.status
        fields = {
            "request_id": response.headers.get("X-Request-ID"),
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(time * 1000, 2),
            "remote": request.remote,
        }
        if self._handler is None:
            logger.info("%s %s %s", method, path, status, extra=fields)
            return
        entry: dict[str, Any] = {
            "time": self._now(),
            "level": "INFO",
            "logger": logger.name,
            "message": f"{method} {path} {status}",
        }
        if fields["request_id"] is None:
            del fields["request_id"]
        entry.update(fields)
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self._flush)
            except RuntimeError:  # no loop: write at once
                self._pending.append(_encode(entry))
                self._flush()
                return
        self._pending.append(_encode(entry))

    def _now(self) -> str:
        """The time as JsonFormatter writes it, the part up to the second made once a second."""
        now = time_module.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((now - second) * 1000):03d}+00:00"

    def _flush(self) -> None:
        lines, self._pending = self._pending, []
        handler = self._handler
        if not lines or handler is None:
            return
        handler.acquire()
        try:
            handler.stream.write("\n".join(lines) + "\n")
            handler.flush()
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": "access log lines lost", "levelno": logging.ERROR}))
        finally:
            handler.release()

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def _stream_handler(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The handler configure_logging installed, when it is the only one the logger's records reach."""
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        handlers.extend(current.handlers)
        current = current.parent if current.propagate else None
    if len(handlers) == 1 and isinstance(handlers[0], logging.StreamHandler):
        handler = handlers[0]
        # Its filter concerns aiohttp's parser errors only.
        if isinstance(handler.formatter, JsonFormatter) and all(
            isinstance(f, MalformedRequestFilter) for f in handler.filters
        ):
            return handler
    return None
