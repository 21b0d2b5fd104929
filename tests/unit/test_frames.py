"""server/realtime/frames.py: pre-built RFC 6455 text frames and the close codes clients act on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tidings.server.realtime.frames import CloseCode, notification_frame, text_frame

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Frame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    length_code: int  # the 7-bit payload length field: the length, or 126/127 for an extended length
    length: int
    header_size: int
    payload: bytes


def parse_frame(data: bytes) -> Frame:
    """Decode one frame per RFC 6455 section 5.2, independently of the code under test."""
    first, second = data[0], data[1]
    length_code = second & 0x7F
    if length_code == 126:
        length, header_size = int.from_bytes(data[2:4], "big"), 4
    elif length_code == 127:
        assert data[2] & 0x80 == 0, "the most significant bit of a 64-bit length must be 0"
        length, header_size = int.from_bytes(data[2:10], "big"), 10
    else:
        length, header_size = length_code, 2
    return Frame(
        fin=bool(first & 0x80),
        rsv=first & 0x70,
        opcode=first & 0x0F,
        masked=bool(second & 0x80),
        length_code=length_code,
        length=length,
        header_size=header_size,
        payload=data[header_size:],
    )


@pytest.mark.parametrize(
    ("length", "length_code", "header_size"),
    [(0, 0, 2), (1, 1, 2), (125, 125, 2), (126, 126, 4), (65535, 126, 4), (65536, 127, 10), (70_000, 127, 10)],
)
def test_text_frame_header(length: int, length_code: int, header_size: int) -> None:
    """FIN set, no RSV bits, opcode 1 (text), unmasked, and the shortest length encoding that fits."""
    payload = bytes(i % 251 for i in range(length))
    data = text_frame(payload)
    frame = parse_frame(data)
    assert frame.fin is True
    assert frame.rsv == 0
    assert frame.opcode == 0x1
    assert frame.masked is False
    assert frame.length_code == length_code
    assert frame.header_size == header_size
    assert frame.length == length
    assert frame.payload == payload
    assert len(data) == header_size + length


def test_notification_frame_wraps_the_notification_in_json() -> None:
    notification: dict[str, Any] = {
        "id": "64b7f0c2a1b2c3d4e5f60718",
        "title": "Héllo 👋",
        "body": "x" * 300,
        "data": {"nested": [1, None, True]},
        "read": False,
    }
    frame = parse_frame(notification_frame(notification))
    assert (frame.fin, frame.opcode, frame.masked) == (True, 0x1, False)
    assert frame.length == len(frame.payload)
    assert frame.length_code == 126  # over 125 bytes: the 16-bit length was used
    assert json.loads(frame.payload) == {"type": "notification", "notification": notification}


def test_notification_frame_payload_is_valid_utf8_text() -> None:
    """A text frame must carry UTF-8 (RFC 6455 section 5.6)."""
    frame = parse_frame(notification_frame({"id": "1", "title": "ça ✓"}))
    assert json.loads(frame.payload.decode("utf-8"))["notification"]["title"] == "ça ✓"


def close_codes() -> dict[str, int]:
    return {name: value for name, value in vars(CloseCode).items() if name.isupper()}


RECONNECT = ["RECONNECT", "TOKEN_EXPIRED", "SLOW_CLIENT", "LOST_SYNC"]
DO_NOT_RECONNECT = ["PROTOCOL_ABUSE", "BAD_CREDENTIALS", "FORBIDDEN", "AUTH_TIMEOUT", "TOO_MANY_CONNECTIONS"]


@pytest.mark.parametrize("name", RECONNECT)
def test_reconnect_codes_are_in_4000_to_4099(name: str) -> None:
    assert 4000 <= getattr(CloseCode, name) <= 4099


@pytest.mark.parametrize("name", DO_NOT_RECONNECT)
def test_do_not_reconnect_codes_are_in_4400_to_4499(name: str) -> None:
    assert 4400 <= getattr(CloseCode, name) <= 4499


def test_every_close_code_is_classified_and_distinct() -> None:
    codes = close_codes()
    assert set(codes) == {"GOING_AWAY", *RECONNECT, *DO_NOT_RECONNECT}
    assert codes["GOING_AWAY"] == 1001
    assert len(set(codes.values())) == len(codes)


@pytest.mark.parametrize(
    ("name", "status"),
    [("BAD_CREDENTIALS", 401), ("FORBIDDEN", 403), ("AUTH_TIMEOUT", 408), ("TOO_MANY_CONNECTIONS", 429)],
)
def test_do_not_reconnect_codes_mirror_http_statuses(name: str, status: int) -> None:
    assert getattr(CloseCode, name) == 4000 + status
