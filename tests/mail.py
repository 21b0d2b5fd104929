"""A real SMTP server for the tests (aiosmtpd's Controller on a port of its own): it keeps what it receives, can
refuse the next deliveries with a temporary error, and lets a test await a message without sleeping."""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from email.message import EmailMessage
from typing import Any, TypeVar

import pytest
from aiosmtpd.controller import Controller

from tests.launcher import HOST, free_port

T = TypeVar("T")
TIMEOUT = 20.0
LINK = re.compile(r"https?://[^\s<>\"]+")


class Inbox:
    """Messages the server received, in order; `refuse` deliveries are answered 451 first."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.refuse = 0
        self.refused = 0
        self._lock = threading.RLock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.port = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            if self.refuse > 0:
                self.refuse -= 1
                self.refused += 1
                return "451 4.3.0 Try again later"
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            self.messages.append(message)
            waiters = list(self._waiters)
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        with self._lock:
            return [m for m in self.messages if addressed_to(m, address)]

    async def wait_for(
        self, predicate: Callable[[list[EmailMessage]], list[EmailMessage]], within: float = TIMEOUT
    ) -> list[EmailMessage]:
        """Wait until `predicate` (given all messages so far) returns a non-empty list, and return it."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(within):
                while True:
                    event.clear()
                    with self._lock:
                        found = predicate(list(self.messages))
                    if found:
                        return found
                    await event.wait()
        finally:
            self._waiters.remove(entry)

    async def next_to(self, address: str, *, after: int = 0, within: float = TIMEOUT) -> EmailMessage:
        """The (after+1)-th message to `address`."""
        found = await self.wait_for(lambda messages: [m for m in messages if addressed_to(m, address)][after:], within)
        return found[0]


def addressed_to(message: EmailMessage, address: str) -> bool:
    return email.utils.parseaddr(str(message["To"]))[1].lower() == address.lower()


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def link_in(message: EmailMessage) -> str:
    """The path and query of the first link in the text part (the tests' server is not at PUBLIC_URL)."""
    match = LINK.search(text_of(message))
    assert match, text_of(message)
    url = match.group(0)
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def token_in(message: EmailMessage) -> str:
    return link_in(message).split("token=", 1)[1]


@pytest.fixture
def smtp() -> Iterator[Inbox]:
    inbox = Inbox()
    inbox.port = free_port()
    controller = Controller(inbox, hostname=HOST, port=inbox.port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


def mail_settings(inbox: Inbox, **overrides: Any) -> dict[str, Any]:
    """make_client overrides: deliver to `inbox`, retry fast."""
    return {
        "smtp_host": HOST,
        "smtp_port": inbox.port,
        "smtp_security": "none",
        "job_retry_delay": 0.2,
        "job_retry_max_delay": 1.0,
        **overrides,
    }


async def eventually(probe: Callable[[], Awaitable[T | None]], within: float = TIMEOUT) -> T:
    """Poll a state kept in Redis (no event announces it, across processes) until `probe` returns it."""
    async with asyncio.timeout(within):
        while True:
            found = await probe()
            if found:
                return found
            await asyncio.sleep(0.05)
