"""server/services/authenticator.py against the real services: identical reads share one, and a read that an
invalidation overtook never fills the cache.

Reads are watched (and held, to make a race happen on cue) by wrapping `User.get` and `Session.get`, the reads the
authenticator makes; every other caller of them passes through unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from beanie import PydanticObjectId

from tests.conftest import Account, Accounts
from tests.helpers import API, error_of
from tidings.documents import Session, User
from tidings.server.adapters.codecs import AUTH_TOPIC, AuthChange, encode_auth
from tidings.server.adapters.errors import InvalidToken
from tidings.server.keys import authenticator_key, broker_key
from tidings.server.services.authenticator import Authenticator

ME = f"{API}/users/me"
SOON = 5.0  # a caller that wrongly joined a held read would wait for it forever


class WatchedReads:
    """Counts a document class's `get` per id; `hold(id)` makes the next read of that id wait, after it has read the
    database, until `release()`: a read in flight that has already seen the old document."""

    def __init__(self, original: Callable[..., Awaitable[Any]]) -> None:
        self.original = original
        self.counts: dict[PydanticObjectId, int] = {}
        self.held: PydanticObjectId | None = None
        self.fetched = asyncio.Event()
        self.released = asyncio.Event()

    async def get(self, document_id: PydanticObjectId, *args: Any, **kwargs: Any) -> Any:
        self.counts[document_id] = self.counts.get(document_id, 0) + 1
        document = await self.original(document_id, *args, **kwargs)
        if document_id == self.held:
            self.held = None
            self.fetched.set()
            await self.released.wait()
        return document

    def hold(self, document_id: str) -> None:
        self.held = PydanticObjectId(document_id)

    def release(self) -> None:
        self.released.set()

    def count(self, document_id: str) -> int:
        return self.counts.get(PydanticObjectId(document_id), 0)


@pytest.fixture
def user_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[WatchedReads]:
    reads = WatchedReads(User.get)
    monkeypatch.setattr(User, "get", reads.get)
    yield reads
    reads.release()


@pytest.fixture
def session_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[WatchedReads]:
    reads = WatchedReads(Session.get)
    monkeypatch.setattr(Session, "get", reads.get)
    yield reads
    reads.release()


def authenticator_of(client: TestClient[Any, Any]) -> Authenticator:
    authenticator: Authenticator = client.app[authenticator_key]
    authenticator.clear()  # as after a restart: nothing cached
    return authenticator


def session_of(me: Account, authenticator: Authenticator) -> str:
    return authenticator._tokens.decode("access", me.access_token).session_id


async def until(condition: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def test_checks_of_one_token_at_once_share_one_read_of_the_user_and_one_of_the_session(
    client: TestClient[Any, Any], accounts: Accounts, user_reads: WatchedReads, session_reads: WatchedReads
) -> None:
    """What ten sockets of one user reconnecting together after a restart do."""
    me = await accounts.user()
    authenticator = authenticator_of(client)
    principals = await asyncio.gather(*(authenticator.authenticate(me.access_token, remember=False) for _ in range(10)))
    assert {principal.user_id for principal in principals} == {me.id}
    assert user_reads.count(me.id) == 1
    assert session_reads.count(session_of(me, authenticator)) == 1
    # Cached now: the next check reads nothing.
    await authenticator.authenticate(me.access_token, remember=False)
    assert (user_reads.count(me.id), session_reads.count(session_of(me, authenticator))) == (1, 1)


async def test_checks_of_different_users_do_not_share(
    client: TestClient[Any, Any], accounts: Accounts, user_reads: WatchedReads
) -> None:
    first, second = await accounts.user(), await accounts.user()
    authenticator = authenticator_of(client)
    one, two = await asyncio.gather(
        authenticator.authenticate(first.access_token), authenticator.authenticate(second.access_token)
    )
    assert (one.user_id, two.user_id) == (first.id, second.id)
    assert (one.email, two.email) == (first.email, second.email)
    assert (user_reads.count(first.id), user_reads.count(second.id)) == (1, 1)


async def test_a_caller_joins_a_read_in_flight_while_nothing_changed(
    client: TestClient[Any, Any], accounts: Accounts, user_reads: WatchedReads
) -> None:
    """Had the read finished, the cache would have served the later caller its result: it may share it."""
    me = await accounts.user()
    authenticator = authenticator_of(client)
    user_reads.hold(me.id)
    early = asyncio.create_task(authenticator.user_state(me.id))
    await user_reads.fetched.wait()
    late = asyncio.create_task(authenticator.user_state(me.id))
    await asyncio.sleep(0.05)
    assert not late.done()  # waiting for the read in flight, not reading again
    user_reads.release()
    assert await early == await late
    assert user_reads.count(me.id) == 1


async def test_while_the_broker_is_down_a_caller_never_joins_a_read_in_flight(
    client: TestClient[Any, Any], accounts: Accounts, user_reads: WatchedReads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing would tell this process that the read went stale, so every caller reads for itself."""
    me = await accounts.user()
    authenticator = authenticator_of(client)
    monkeypatch.setattr(client.app[broker_key], "connected", False)
    user_reads.hold(me.id)
    early = asyncio.create_task(authenticator.user_state(me.id))
    await user_reads.fetched.wait()
    assert await asyncio.wait_for(authenticator.user_state(me.id), SOON) is not None  # its own read; the first is held
    assert not early.done()
    assert user_reads.count(me.id) == 2
    user_reads.release()
    assert await early is not None


async def test_a_user_read_that_a_deactivation_overtook_is_not_cached(
    client: TestClient[Any, Any], accounts: Accounts, user_reads: WatchedReads
) -> None:
    me, admin = await accounts.user(), await accounts.user(admin=True)
    authenticator = authenticator_of(client)
    assert await authenticator.user_state(admin.id) is not None  # the admin's own check reads nothing held
    user_reads.hold(me.id)
    early = asyncio.create_task(authenticator.user_state(me.id))
    await user_reads.fetched.wait()  # that read has seen the user active

    response = await client.patch(f"{API}/users/{me.id}", headers=admin.headers, json={"is_active": False})
    assert response.status == 200, await response.text()
    # Asked after the change while the old read is still in flight: a read of its own, never the old one.
    fresh = await asyncio.wait_for(authenticator.user_state(me.id), SOON)
    assert fresh is not None
    assert not fresh.is_active
    assert not early.done()

    user_reads.release()
    stale = await early
    assert stale is not None
    assert stale.is_active  # it answered its caller, who asked before the change
    state = await authenticator.user_state(me.id)
    assert state is not None
    assert not state.is_active  # but it did not replace the fresh entry
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(me.access_token)
    await error_of(await client.get(ME, headers=me.headers), 401, "invalid_token")


async def test_a_session_read_that_a_logout_overtook_is_not_cached(
    client: TestClient[Any, Any], accounts: Accounts, session_reads: WatchedReads
) -> None:
    me = await accounts.user()
    other = await accounts.login(me.email)  # a second session of the same user, which logs the first one out
    authenticator = authenticator_of(client)
    session_id = session_of(me, authenticator)
    session_reads.hold(session_id)
    early = asyncio.create_task(authenticator.session_live(session_id, me.id))
    await session_reads.fetched.wait()  # that read has seen the session live

    response = await client.post(
        f"{API}/auth/logout",
        headers={"Authorization": f"Bearer {other['access_token']}"},
        json={"refresh_token": me.refresh_token},
    )
    assert response.status == 204, await response.text()
    assert await asyncio.wait_for(authenticator.session_live(session_id, me.id), SOON) is False
    assert not early.done()

    session_reads.release()
    assert await early is True  # its caller asked before the logout
    assert await authenticator.session_live(session_id, me.id) is False
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(me.access_token)
    await error_of(await client.get(ME, headers=me.headers), 401, "invalid_token")


async def test_an_invalidation_from_another_process_keeps_an_overtaken_read_out_of_the_cache(
    client: TestClient[Any, Any], accounts: Accounts, user_reads: WatchedReads
) -> None:
    """The change is made elsewhere: here only the broker's message says so."""
    me, sentinel = await accounts.user(), await accounts.user()
    authenticator = authenticator_of(client)
    assert await authenticator.user_state(sentinel.id) is not None  # cached
    user_reads.hold(me.id)
    early = asyncio.create_task(authenticator.user_state(me.id))
    await user_reads.fetched.wait()

    for account in (me, sentinel):  # what another process does: the database, then the message
        user = await User.find_one(User.id == PydanticObjectId(account.id))
        assert user is not None
        await user.set({User.is_active: False})
        await client.app[broker_key].publish(AUTH_TOPIC, encode_auth(AuthChange("user", account.id)))

    async def sentinel_seen() -> bool:  # one channel, in order: the sentinel's message comes after ours
        state = await authenticator.user_state(sentinel.id)
        return state is not None and not state.is_active

    await until(sentinel_seen)
    user_reads.release()
    stale = await early
    assert stale is not None
    assert stale.is_active
    state = await authenticator.user_state(me.id)
    assert state is not None
    assert not state.is_active
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(me.access_token)
