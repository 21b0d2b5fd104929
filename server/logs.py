"""JSON logs, one object per line, each carrying the id of the request it belongs to."""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import json
import logging
import sys
import time as time_module
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# JSON's string escaping, in C, as json.dumps applies it (ASCII only, as json.dumps writes by default).
_string: Callable[[str], str] = json.encoder.encode_basestring_ascii

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


# How long an access line may wait for others to share its write, and how many lines one write carries at most.
FLUSH_AFTER = 0.1
FLUSH_LINES = 64


class AccessLogger(AbstractAccessLogger):
    """One JSON line per request; the path only, never the query string, which may carry secrets.

    The line is the one JsonFormatter would write for the record, but made here and written in batches: through a
    LogRecord, the formatter's walk over its attributes and a write and flush per line, each request paid about
    30 µs. Lines go to the stream of the root logger's handler (configure_logging's), under its lock, in one write
    per FLUSH_LINES lines or per FLUSH_AFTER seconds, whichever comes first, and at exit. aiohttp makes an access
    logger per connection, so the batch is shared by all of them (one per handler). With other handlers (a host
    application's), the record goes through logging as usual.
    """

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        handler = _stream_handler(logger)
        self._batch = _LineBatch.of(handler) if handler is not None else None
        self._logger_json = _string(logger.name)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        method, path, status = request.method, request.path, response.status
        request_id = response.headers.get("X-Request-ID")
        duration_ms = round(time * 1000, 2)
        remote = request.remote
        batch = self._batch
        if batch is None:
            fields = {"method": method, "path": path, "status": status, "duration_ms": duration_ms, "remote": remote}
            if request_id is not None:
                fields["request_id"] = request_id
            logger.info("%s %s %s", method, path, status, extra=fields)
            return
        # The JSON object JsonFormatter would write, in its key order, formatted directly: each string through
        # json's own escaping (the path and the id come from the client), the numbers as json writes them.
        method_json, path_json = _string(method), _string(path)
        batch.add(
            f'{{"time": "{batch.now()}", "level": "INFO", "logger": {self._logger_json}, '
            f'"message": {_string(f"{method} {path} {status}")}, '
            + (f'"request_id": {_string(request_id)}, ' if request_id is not None else "")
            + f'"method": {method_json}, "path": {path_json}, "status": {status}, '
            f'"duration_ms": {duration_ms!r}, "remote": {"null" if remote is None else _string(remote)}}}'
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class _LineBatch:
    """Access lines waiting for one write to a handler's stream; one per handler, shared by every access logger."""

    # Every batch, for the flush at exit; each lives as long as its handler, which holds it.
    _all: ClassVar[weakref.WeakSet[_LineBatch]] = weakref.WeakSet()
    _flushed_at_exit: ClassVar[bool] = False

    @classmethod
    def of(cls, handler: logging.StreamHandler[Any]) -> _LineBatch:
        batch: _LineBatch | None = getattr(handler, "_tidings_access_batch", None)
        if batch is None:
            batch = cls(handler)
            handler._tidings_access_batch = batch  # type: ignore[attr-defined]
            if not cls._flushed_at_exit:
                atexit.register(cls.flush_all)
                cls._flushed_at_exit = True
            cls._all.add(batch)
        return batch

    @classmethod
    def flush_all(cls) -> None:
        """What is still waiting when the process ends."""
        for batch in list(cls._all):
            batch.flush()

    def __init__(self, handler: logging.StreamHandler[Any]) -> None:
        self._handler = handler
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""

    def now(self) -> str:
        """The time as JsonFormatter writes it, the part up to the second made once a second."""
        now = time_module.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((now - second) * 1000):03d}+00:00"

    def add(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_AFTER, self.flush)
            except RuntimeError:  # no loop: write at once
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._pending = self._pending, []
        if not lines:
            return
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write("\n".join(lines) + "\n")
            handler.flush()
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": "access log lines lost", "levelno": logging.ERROR}))
        finally:
            handler.release()


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
