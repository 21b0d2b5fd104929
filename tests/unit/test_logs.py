"""server/logs.py: JsonFormatter writes one JSON object per record, with the request id it belongs to."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from typing import IO, Any

import pytest
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.test_utils import make_mocked_request

from tidings.server.logs import (
    FLUSH_AFTER,
    FLUSH_LINES,
    AccessLogger,
    JsonFormatter,
    MalformedRequestFilter,
    request_id_var,
)

pytestmark = pytest.mark.unit

LOGGER = "tidings.unit"


def record(msg: str = "hello %s", args: tuple[Any, ...] = ("world",), **kwargs: Any) -> logging.LogRecord:
    logger = logging.getLogger(LOGGER)
    return logger.makeRecord(
        LOGGER,
        kwargs.pop("level", logging.INFO),
        __file__,
        10,
        msg,
        args,
        kwargs.pop("exc_info", None),
        extra=kwargs.pop("extra", None),
    )


def formatted(entry: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(entry)
    assert "\n" not in line, "one record, one line"
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_a_record_is_one_object_with_time_level_logger_and_message() -> None:
    entry = record(level=logging.WARNING)
    entry.created = 1_700_000_000.123456
    assert formatted(entry) == {
        "time": "2023-11-14T22:13:20.123+00:00",
        "level": "WARNING",
        "logger": LOGGER,
        "message": "hello world",
    }


def test_no_request_id_outside_a_request() -> None:
    assert request_id_var.get() is None
    assert "request_id" not in formatted(record())


def test_the_request_id_comes_from_the_context() -> None:
    token = request_id_var.set("req-123")
    try:
        assert formatted(record())["request_id"] == "req-123"
    finally:
        request_id_var.reset(token)
    assert "request_id" not in formatted(record())


def test_a_request_id_on_the_record_wins_over_the_context() -> None:
    """The access log passes the id of the response it logs, whatever the context holds."""
    token = request_id_var.set("from-context")
    try:
        assert formatted(record(extra={"request_id": "from-record"}))["request_id"] == "from-record"
    finally:
        request_id_var.reset(token)


def test_extra_fields_are_included_and_unserialisable_values_become_strings() -> None:
    entry = formatted(record(extra={"user_id": "u1", "count": 3, "ratio": 0.5, "tags": ["a"], "when": object}))
    assert (entry["user_id"], entry["count"], entry["ratio"], entry["tags"]) == ("u1", 3, 0.5, ["a"])
    assert entry["when"] == str(object)


def test_extra_fields_do_not_overwrite_the_standard_ones() -> None:
    entry = formatted(record(extra={"level": "FAKE", "logger": "fake", "time": "never"}))
    assert (entry["level"], entry["logger"]) == ("INFO", LOGGER)
    assert entry["time"] != "never"


def test_logging_internals_are_left_out() -> None:
    entry = formatted(record())
    for internal in ("msg", "args", "pathname", "lineno", "levelno", "created", "thread", "process", "exc_text"):
        assert internal not in entry


def test_an_exception_is_formatted_in_exc_info() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        entry = formatted(record("failed", (), level=logging.ERROR, exc_info=sys.exc_info()))
    assert entry["message"] == "failed"
    assert entry["exc_info"].startswith("Traceback (most recent call last):")
    assert entry["exc_info"].endswith("ValueError: boom")


def test_no_exc_info_key_without_an_exception() -> None:
    assert "exc_info" not in formatted(record())


def test_messages_with_quotes_and_new_lines_stay_valid_json() -> None:
    assert formatted(record('a "quoted"\nline %s', ("é",)))["message"] == 'a "quoted"\nline é'


def test_a_malformed_request_is_one_info_line_without_traceback() -> None:
    """aiohttp logs an over-long header as an error with a traceback; it is the client's mistake."""
    try:
        raise LineTooLong(b"x" * 10, "8190")
    except LineTooLong:
        record = logging.getLogger("aiohttp.server").makeRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s", ("1.2.3.4",), sys.exc_info()
        )
    assert MalformedRequestFilter().filter(record)
    assert record.levelno == logging.INFO
    assert record.exc_info is None
    assert "malformed request refused" in record.getMessage()
    line = json.loads(JsonFormatter().format(record))
    assert "exc_info" not in line


def test_other_server_errors_keep_their_traceback() -> None:
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        record = logging.getLogger("aiohttp.server").makeRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (), sys.exc_info()
        )
    assert MalformedRequestFilter().filter(record)
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


def access_logger(stream: IO[str]) -> tuple[AccessLogger, logging.Logger]:
    """An access logger whose records reach one JSON handler writing to `stream` (as configure_logging sets up)."""
    root = logging.getLogger(f"{LOGGER}.access_root_{id(stream)}")
    root.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(MalformedRequestFilter())
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logger = logging.getLogger(f"{root.name}.access")
    return AccessLogger(logger, ""), logger


def request_and_response(path: str) -> tuple[Any, web.Response]:
    return make_mocked_request("GET", path), web.Response(status=204, headers={"X-Request-ID": "r-1"})


async def test_access_lines_are_what_the_formatter_writes_and_go_out_together() -> None:
    stream = io.StringIO()
    access, logger = access_logger(stream)
    request, response = request_and_response("/api/v1/users/me?token=secret")
    for _ in range(3):
        access.log(request, response, 0.0123)
    assert stream.getvalue() == ""  # written within FLUSH_AFTER, in one write
    await asyncio.sleep(FLUSH_AFTER * 2)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    entry = json.loads(lines[0])
    assert "secret" not in lines[0]
    assert entry.pop("time").endswith("+00:00")
    assert entry == {
        "level": "INFO",
        "logger": logger.name,
        "message": "GET /api/v1/users/me 204",
        "request_id": "r-1",
        "method": "GET",
        "path": "/api/v1/users/me",
        "status": 204,
        "duration_ms": 12.3,
        "remote": None,
    }
    # The same keys as a record through the formatter.
    via_logging = formatted(record("GET /api/v1/users/me 204", (), extra={k: 1 for k in entry if k != "message"}))
    assert set(via_logging) - {"level", "logger", "time"} == set(entry) - {"level", "logger"}


@pytest.mark.parametrize("path", ['/a"b\\c', "/caf\u00e9/\u2603", "/tab\there/\x01", "/" + "x" * 300])
async def test_an_access_line_is_byte_for_byte_what_json_dumps_writes(path: str) -> None:
    # The line is formatted directly, not through json.dumps: same bytes, whatever the client put in the path.
    stream = io.StringIO()
    access, logger = access_logger(stream)
    request = make_mocked_request("POST", path)
    access.log(request, web.Response(status=201, headers={"X-Request-ID": 'id"1'}), 0.000125)
    access.log(request, web.Response(status=500), 1.5)
    await asyncio.sleep(FLUSH_AFTER * 2)
    first, second = stream.getvalue().splitlines()
    for line, extra in ((first, {"request_id": 'id"1'}), (second, {})):
        entry = json.loads(line)
        status = 201 if extra else 500
        expected = {
            "time": entry["time"],
            "level": "INFO",
            "logger": logger.name,
            "message": f"POST {request.path} {status}",
            **extra,
            "method": "POST",
            "path": request.path,
            "status": status,
            "duration_ms": 0.12 if extra else 1500.0,
            "remote": None,
        }
        assert line == json.dumps(expected)


async def test_access_lines_go_through_logging_when_other_handlers_listen() -> None:
    stream = io.StringIO()
    access, logger = access_logger(stream)
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    logger.addHandler(Capture())
    access = AccessLogger(logger, "")  # decides at creation, as aiohttp creates it once per server
    access.log(*request_and_response("/x"), 0.001)
    assert [r.getMessage() for r in captured] == ["GET /x 204"]
    assert json.loads(stream.getvalue())["path"] == "/x"


async def test_access_loggers_of_all_connections_share_one_write() -> None:
    # aiohttp makes an access logger per connection: their lines still go out together, at FLUSH_LINES at once.
    stream = io.StringIO()
    first, logger = access_logger(stream)
    loggers = [first, *(AccessLogger(logger, "") for _ in range(FLUSH_LINES - 1))]
    writes: list[str] = []

    class CountingStream(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return super().write(text)

    handler = logging.getLogger(f"{LOGGER}.access_root_{id(stream)}").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(CountingStream())
    for access in loggers[:-1]:
        access.log(*request_and_response("/z"), 0.001)
    assert writes == []
    loggers[-1].log(*request_and_response("/z"), 0.001)
    assert len(writes) == 1 and writes[0].count("\n") == FLUSH_LINES


def test_access_lines_outside_a_loop_are_written_at_once() -> None:
    stream = io.StringIO()
    access, _ = access_logger(stream)
    access.log(*request_and_response("/y"), 0.001)
    assert json.loads(stream.getvalue())["path"] == "/y"
