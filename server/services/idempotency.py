"""Idempotent requests: the same `Idempotency-Key` from the same caller gets the first response again, and the work
behind it is done once, across processes and restarts, and through a Redis outage.

The record lives in MongoDB, beside the notifications it stands for (documents/idempotency.py). Its `_id` is the
SHA-256 of the caller and the key, so a claim is an insert under a unique `_id`: two requests racing (in one process
or two) cannot both win, on FerretDB too, where concurrent updates of one document can be lost but a duplicate
insert always fails. Then:

- the claimant does the work and completes the record with its status and body (a client error, 4xx, is a result
  like any other and is replayed too);
- a request that finds a completed record with the same fingerprint (the endpoint and its body) replays it; with
  another fingerprint it is refused (422 idempotency_key_reused);
- a request that finds a pending record waits for it (up to `wait` seconds) and replays it, or answers 409
  idempotency_key_in_use. It never does the work a second time.

A claim whose work failed (MongoDB down in the middle of a send) is kept, its lease ended: part of the work may be
stored, and a retry must not do it twice, so it answers 409 saying the first request's outcome is unknown. So does
a retry of a request whose process stopped half way, once its lease (LEASE_SECONDS) is over.

Records expire after the TTL: a request that finds an expired one deletes it and claims the key afresh, and a
periodic sweep deletes the others (FerretDB v1 has no TTL indexes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from tidings.documents import IdempotencyRecord
from tidings.documents.clock import utcnow
from tidings.server.adapters.errors import ApiError, IdempotencyKeyInUse, IdempotencyKeyReused, ValidationFailed

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
DEFAULT_TTL = 86_400.0
# A request that holds a claim longer than this has stopped (its process died); its outcome is unknown.
LEASE_SECONDS = 120.0
# How long a second request waits for the first before answering 409.
WAIT_SECONDS = 10.0
POLL_START, POLL_MAX = 0.02, 0.5
SWEEP_BATCH = 1000
# Client errors that a retry may cure by itself: not kept, so the same key can be used again.
TRANSIENT_STATUSES = frozenset({409, 429})

Work = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]


def check_key(raw: str) -> str:
    """The Idempotency-Key header's value: 1 to 255 printable ASCII characters, or ValidationFailed (422)."""
    if not 1 <= len(raw) <= MAX_KEY_LENGTH or not all(" " <= char <= "~" for char in raw):
        raise ValidationFailed(
            details={HEADER: [f"1 to {MAX_KEY_LENGTH} printable ASCII characters (space to tilde)."]}
        )
    return raw


def record_id(caller: str, key: str) -> str:
    """The record's `_id`: keys are scoped per caller ("user:<id>" or "key:<id>")."""
    return hashlib.sha256(f"{caller}\n{key}".encode()).hexdigest()


def fingerprint(operation: str, body: Any) -> str:
    """What a request asked, whatever its JSON's key order or spacing: the operation and its validated body."""
    canonical = json.dumps([operation, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    body: str  # JSON
    replayed: bool


class Idempotency:
    def __init__(self, ttl: float = DEFAULT_TTL, *, lease: float = LEASE_SECONDS, wait: float = WAIT_SECONDS) -> None:
        self._ttl = timedelta(seconds=ttl)
        self._lease = timedelta(seconds=lease)
        self._wait = wait
        # Claims held by this process: its own waiters are woken when one completes, others poll.
        self._running: dict[str, asyncio.Event] = {}

    async def run(self, caller: str, key: str, fingerprint: str, work: Work) -> Outcome:
        """Do `work` once for this caller and key, and answer every request with its outcome."""
        rid = record_id(caller, key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        delay = POLL_START
        while True:
            now = utcnow()
            claim = IdempotencyRecord(
                id=rid,
                fingerprint=fingerprint,
                owner=secrets.token_hex(8),
                lease_until=now + self._lease,
                created_at=now,
                expires_at=now + self._ttl,
            )
            try:
                await claim.insert()
            except DuplicateKeyError:
                found = await IdempotencyRecord.get(rid)
                if found is None:
                    continue  # expired and deleted meanwhile: claim it
                if found.expires_at <= now:
                    await self._delete_expired(found)
                    continue
                if found.fingerprint != fingerprint:
                    raise IdempotencyKeyReused() from None
                if found.state == "done" and found.status is not None and found.body is not None:
                    return Outcome(found.status, found.body, True)
                if found.lease_until <= now:
                    raise IdempotencyKeyInUse(
                        "The first request with this Idempotency-Key did not finish, so whether it was done is "
                        "unknown: check before trying again with a new key."
                    ) from None
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise IdempotencyKeyInUse() from None
                delay = await self._wait_for(rid, min(delay, remaining))
                continue
            return await self._do(claim, work)

    async def _wait_for(self, rid: str, pause: float) -> float:
        """Until the claim of `rid` completes in this process, or a poll's pause for another's; the next pause."""
        running = self._running.get(rid)
        if running is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause * 10):
                    await running.wait()
            return pause
        # Another process holds it: nothing to await but the record, so poll it with a growing pause.
        await asyncio.sleep(pause)
        return min(pause * 2, POLL_MAX)

    async def _do(self, claim: IdempotencyRecord, work: Work) -> Outcome:
        rid = str(claim.id)
        done = self._running[rid] = asyncio.Event()
        try:
            try:
                status, body = await work()
            except ApiError as exc:
                if exc.status in TRANSIENT_STATUSES:
                    await self._release(claim)
                    raise
                status, body = exc.status, exc.body()
            except BaseException:
                # Part of it may be stored: kept, so a retry never does it twice; its lease ends now, so retries
                # learn that at once rather than after waiting.
                await self._abandon(claim)
                raise
            text = json.dumps(body)
            try:
                await IdempotencyRecord.get_pymongo_collection().update_one(
                    {"_id": rid, "owner": claim.owner}, {"$set": {"state": "done", "status": status, "body": text}}
                )
            except Exception as exc:
                # The response still goes out; retries answer 409 until the record expires.
                log.warning("could not complete an idempotency record: %s", exc)
            return Outcome(status, text, False)
        finally:
            done.set()
            self._running.pop(rid, None)

    @staticmethod
    async def _abandon(claim: IdempotencyRecord) -> None:
        with contextlib.suppress(Exception):
            await IdempotencyRecord.get_pymongo_collection().update_one(
                {"_id": claim.id, "owner": claim.owner}, {"$set": {"lease_until": utcnow()}}
            )

    @staticmethod
    async def _release(claim: IdempotencyRecord) -> None:
        with contextlib.suppress(Exception):
            await IdempotencyRecord.get_pymongo_collection().delete_one({"_id": claim.id, "owner": claim.owner})

    @staticmethod
    async def _delete_expired(found: IdempotencyRecord) -> None:
        # Only that record: one claimed again meanwhile has another expiry and stays.
        await IdempotencyRecord.get_pymongo_collection().delete_one({"_id": found.id, "expires_at": found.expires_at})

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete expired records, a batch at a time (a range on expires_at: a scan on FerretDB, run rarely)."""
        now = now or utcnow()
        collection = IdempotencyRecord.get_pymongo_collection()
        deleted = 0
        while True:
            batch = [
                doc["_id"]
                async for doc in collection.find({"expires_at": {"$lte": now}}, {"_id": 1}).limit(SWEEP_BATCH)
            ]
            if not batch:
                return deleted
            result = await collection.delete_many({"_id": {"$in": batch}, "expires_at": {"$lte": now}})
            deleted += result.deleted_count
            if len(batch) < SWEEP_BATCH:
                return deleted
