"""Data that scales: the latency of every user-facing operation as the database grows.

    .venv/bin/python bench/scale.py                                   # 10,000 users; 0, 100,000 and 1,000,000
    .venv/bin/python bench/scale.py --quick                           # 1,000 users; 0 and 20,000 notifications
    .venv/bin/python bench/scale.py --users 500 --sizes 0,5000,20000 --reps 5 --json out.json
    options: --reps N (30) --op-seconds S (20) --timeout S (600) --mongodb-timeout S --seed N --keep --batch N

What it does, against a database and Redis prefix of its own (tests/launcher.py's Isolation):

1. starts one `tidings serve` process (bench/common.py's tidings_server: ACCESS_LOG=0 unless --access-log, the
   default LOG_LEVEL, cheap password hashing, login rate limits lifted), which creates the collections and their
   indexes;
2. seeds with direct inserts (insert_many, `--batch` documents at a time): the admin, a "probe" user (the one
   measured) and `--users` users, all with one real argon2id hash of bench/common.py's PASSWORD computed once with
   the server's own parameters; then the probe's own history (150 notifications, 30% unread);
3. for each size in `--sizes` (notifications seeded for the users; each step adds the difference to the last):
   inserts targeted sends (one Dispatch and one notification per recipient, 1 to 200 recipients, recipients taken
   round the shuffled user list so that every user gets about as many) and a few broadcasts (so that about
   `--broadcast-share` of what a user sees are broadcasts), with `--read-share` of the targeted ones read, a few
   broadcast receipts (5% of the users read each broadcast) and read-all watermarks (3% of the users, who have read
   everything); ids come from tidings.documents.ids.new_id, so that broadcasts reach every seeded user; then it
   measures every operation below `--reps` times, fewer when their total passes `--op-seconds` (at least once);
4. prints one Markdown table, one column per size (p50 / p99 in ms, and n), with the load average, the seeding
   times and the FerretDB and server CPU time per operation (from /proc/PID/stat; FerretDB's pid is found by its
   port; it is shared, so its CPU includes whatever else runs against it meanwhile); `--json` writes it all.

Operations (in this order at each size): the floor, a GET of a constant JSON from bench/bare_app.py (a bare aiohttp
server started beside tidings, no database); login; GET /users/me; the first page of GET /notifications (limit=20); a
page deep in the probe's history (before= its 25th oldest notification); unread-count; a WebSocket connect until
"ready"; a "resume" that replays the 100 newest notifications (timed from the resume to the 100th frame, on one
socket per size); the admin's user search by email prefix (GET /api/v1/users?q=...); the panel's notification log
with read counts (GET /admin/notifications, logged in through the login form with its CSRF cookie); then the ones
that change state, each on something fresh so that later measurements barely move: mark one read (a different
unread notification of the probe each time), read-all (a different user each time, one that never read all;
each then waits, untimed, until its background clean-up is done), the time that clean-up takes (another read-all,
timed from its answer until every notification it covered is marked), a targeted send to one user (admin) and a
broadcast (admin). Responses are checked (the pages and the replay
against what was seeded); a failure is counted, never timed.

The server bounds every MongoDB operation by its MONGODB_TIMEOUT (5 s by default) and answers 503 past it: on a big
database the slow operations fail that way, and the table says so (with how long the failure took);
`--mongodb-timeout 600` times them to their end instead. Every request goes to 127.0.0.1, and each repetition waits
at most `--timeout` seconds; after a timeout the server is restarted (so that the work in flight stops) and the
operation moves on. The database, the Redis keys and the
server process are removed at the end, also after a failure, Ctrl-C or SIGTERM (`--keep` keeps the data).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import html
import itertools
import json
import os
import platform
import random
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
import uvloop
from argon2 import PasswordHasher, Type
from beanie import init_beanie
from bson import ObjectId
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    API,
    PASSWORD,
    bench_log_dir,
    cpu_seconds,
    load_average,
    log,
    login,
    percentile,
    pid_listening_on,
    run_interruptible,
    script_server,
    tidings_server,
)
from tests.launcher import HOST, MONGODB_URL, Isolation, ServerProcess
from tidings.documents import (
    ALL_DOCUMENTS,
    BroadcastIndex,
    BroadcastReceipt,
    CoveragePage,
    CoverageSummary,
    CoverageTally,
    Dispatch,
    DispatchLogChunk,
    DispatchLogDirectory,
    Inbox,
    InboxPage,
    Notification,
    ReadCounter,
    ReadTally,
    User,
)
from tidings.documents.clock import day_number, utcnow
from tidings.documents.dispatch_log import LOG_PAGE_SIZE, chunk_of
from tidings.documents.ids import new_id
from tidings.documents.notification import BROADCAST_PAGE_SIZE, INBOX_PAGE_SIZE, inbox_page_key
from tidings.documents.user import email_key, search_keys_for, username_key
from tidings.handlers.admin.cookies import SESSION_COOKIE
from tidings.server.adapters.tasks import gather_bounded
from tidings.server.settings import Settings

Doc = dict[str, Any]

PROBE_HISTORY = 150  # the probe's own notifications, seeded before any size
PROBE_UNREAD_SHARE = 0.3
DEEP_INDEX = 24  # "a page deep in history": before= the probe's 25th oldest notification
PAGE = 20
REPLAYED = 100
RECEIPT_SHARE = 0.05  # of the users read each broadcast (a receipt each)
WATERMARK_SHARE = 0.03  # of the users did read-all (an Inbox watermark, everything read)
INACTIVE_SHARE = 0.02
CLEANUP_SECONDS = 60.0  # the longest a read-all's background clean-up may take
MAX_ERRORS = 3  # an operation stops after this many failed repetitions
TOKEN_REFRESH_SECONDS = 300.0  # access tokens live 15 minutes by default; log in again well before
PROGRESS_SECONDS = 10.0
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]*)"')

# Split where used: names of users, for their addresses and for the admin's searches by prefix.
FIRST_NAMES = "anna ben carla david emma felix greta hugo ines jonas klara leon mia noah olga paul rosa samuel tara"
LAST_NAMES = "adams baker costa dubois evans fischer garcia hansen ivanova jensen kowalski larsen moreau nowak olsen"
DOMAINS = ("example.com", "example.org", "mail.example.net")
KINDS = (
    ("comment", "New comment on your post"),
    ("order", "Your order has shipped"),
    ("mention", "You were mentioned in a discussion"),
    ("invoice", "Your invoice is ready"),
    ("reminder", "Reminder: your meeting starts soon"),
    ("security", "New sign-in to your account"),
    ("follow", "You have a new follower"),
    ("report", "Your weekly report is ready"),
)
ANNOUNCEMENTS = (
    "Scheduled maintenance on Sunday night",
    "New: dark mode for everyone",
    "Our terms of service are changing",
    "Happy holidays from the team",
)


class CheckFailed(Exception):
    """An answer that is not what the operation must give (a status, or content against what was seeded)."""

    def __init__(self, message: str, kind: str = "wrong answer") -> None:
        super().__init__(message)
        self.kind = kind  # what the report counts: an HTTP status, a close code, or "wrong answer"


# Seeding


@dataclass(frozen=True)
class SeedUser:
    id: ObjectId
    email: str
    active: bool


@dataclass
class Probe:
    """The measured user, and what the seeder and the bench know it must see."""

    user: SeedUser
    visible: list[str] = field(default_factory=list)  # ids of its notifications and broadcasts, ascending
    unread: list[str] = field(default_factory=list)  # its unread targeted notifications: for "mark one read"

    def sees(self, notification_id: str) -> None:
        bisect.insort(self.visible, notification_id)


@dataclass
class Step:
    """One seeding step: what it added and how long it took."""

    notifications: int = 0
    documents: int = 0
    seconds: float = 0.0

    def __add__(self, other: Step) -> Step:
        return Step(
            self.notifications + other.notifications, self.documents + other.documents, self.seconds + other.seconds
        )


class Writer:
    """Direct inserts, `batch` documents of a collection at a time; counts what it wrote."""

    def __init__(self, db: AsyncDatabase[Doc], batch: int) -> None:
        self.db = db
        self.batch = batch
        self.buffers: dict[str, list[Doc]] = {}
        self.written: dict[str, int] = {}
        self.started = self.reported = time.monotonic()
        self.base = 0

    def begin(self) -> None:
        """A new step: progress is reported from here."""
        self.started = self.reported = time.monotonic()
        self.base = self.total()

    async def add(self, collection: str, doc: Doc) -> None:
        buffer = self.buffers.setdefault(collection, [])
        buffer.append(doc)
        if len(buffer) >= self.batch:
            await self.flush(collection)

    async def flush(self, collection: str | None = None) -> None:
        for name in [collection] if collection is not None else list(self.buffers):
            docs = self.buffers.get(name)
            if docs:
                await self.db[name].insert_many(docs)
                self.written[name] = self.written.get(name, 0) + len(docs)
                self.buffers[name] = []
        now = time.monotonic()
        if now - self.reported >= PROGRESS_SECONDS:
            self.reported = now
            done = self.total() - self.base
            log(f"  seeded {done:,} documents in this step ({done / (now - self.started):,.0f}/s): {self.written}")

    def total(self) -> int:
        return sum(self.written.values())


class Seeder:
    """Valid documents of documents/*.py, inserted straight into the bench's own database."""

    def __init__(
        self, db: AsyncDatabase[Doc], rng: random.Random, password_hash: str, batch: int, isolation: Isolation
    ) -> None:
        self.db = db
        self.isolation = isolation
        self.rng = rng
        self.password_hash = password_hash
        self.writer = Writer(db, batch)
        self.admin = SeedUser(ObjectId(), "", True)
        self.probe = Probe(self.admin)
        self.users: list[SeedUser] = []  # everyone but the admin; the probe first
        self.watermarked: set[ObjectId] = set()
        self.receipt_readers: list[ObjectId] = []
        self.cycle: list[ObjectId] = []
        self.cursor = 0
        self.broadcasts: list[ObjectId] = []
        self.inboxes_created = False
        # Each user's next number in their inbox (services/inbox_pages.py), the server's included, and the users
        # whose top page this step moved.
        self.inbox_numbers: dict[ObjectId, int] = {}
        self.inbox_pages_opened: set[ObjectId] = set()
        self.sent = 0
        self.bound = False
        # What the server keeps beside the documents, as it would have kept it: the log of sends (one number per
        # dispatch, pages of LOG_PAGE_SIZE), the broadcast numbering and the read counts of every send.
        self.dispatches = 0
        self.log_pages: list[tuple[int, ObjectId, ObjectId]] = []  # DispatchLogDirectory's (page, start, opened)
        self.made = 0  # broadcasts numbered so far, the server's included
        self.page_starts: list[ObjectId] = []
        self.covered_through = 0  # broadcasts the watermarked users' read-alls covered
        self.newest_broadcast: ObjectId | None = None
        self.new_reads: dict[int, dict[str, int]] = {}  # log page: dispatch id: reads seeded since the last step
        self.new_coverage: list[tuple[int, int]] = []  # (broadcast number, change of its readers) likewise

    @property
    def notifications(self) -> int:
        return self.writer.written.get(Notification.Settings.name, 0)

    async def create_users(self, count: int) -> None:
        admin = self.user_doc("admin@bench.example.com", "admin", full_name="Bench Admin", is_admin=True)
        probe = self.user_doc("probe@bench.example.com", "probe", full_name="Probe User")
        self.admin = SeedUser(admin["_id"], admin["email"], True)
        self.probe = Probe(SeedUser(probe["_id"], probe["email"], True))
        self.users.append(self.probe.user)
        for doc in (admin, probe):
            await self.writer.add(User.Settings.name, doc)
        first_names, last_names = FIRST_NAMES.split(), LAST_NAMES.split()
        for i in range(count - 1):
            first, last = self.rng.choice(first_names), self.rng.choice(last_names)
            domain = self.rng.choice(DOMAINS)
            doc = self.user_doc(
                f"{first}.{last}{i}@{domain}",
                f"{first}_{last}{i}",
                full_name=f"{first.title()} {last.title()}" if self.rng.random() < 0.7 else None,
                bio="Here for the notifications." if self.rng.random() < 0.1 else None,
                is_active=self.rng.random() >= INACTIVE_SHARE,
            )
            self.users.append(SeedUser(doc["_id"], doc["email"], doc["is_active"]))
            await self.writer.add(User.Settings.name, doc)
        await self.writer.flush()
        others = [user.id for user in self.users[1:]]
        self.watermarked = set(self.rng.sample(others, round(len(others) * WATERMARK_SHARE)))
        self.receipt_readers = [oid for oid in others if oid not in self.watermarked]

    def user_doc(
        self,
        email: str,
        username: str,
        *,
        full_name: str | None,
        bio: str | None = None,
        is_active: bool = True,
        is_admin: bool = False,
    ) -> Doc:
        now = utcnow()
        return {
            "_id": new_id(),
            "email": email,
            "username": username,
            "email_key": email_key(email),
            "username_key": username_key(username),
            "search_keys": search_keys_for(email_key(email), username_key(username)),
            "created_day": day_number(now),
            "password_hash": self.password_hash,
            "full_name": full_name,
            "bio": bio,
            "is_active": is_active,
            "is_admin": is_admin,
            "token_version": 0,
            "created_at": now,
            "updated_at": now,
        }

    async def probe_history(self, count: int) -> None:
        for _ in range(count):
            await self.targeted([self.probe.user.id], unread=self.rng.random() < PROBE_UNREAD_SHARE)
        await self.writer.flush()

    async def top_up_probe_unread(self, wanted: int) -> None:
        """New unread notifications for the probe until it has `wanted` for "mark one read"."""
        while len(self.probe.unread) < wanted:
            await self.targeted([self.probe.user.id], unread=True)
        await self.writer.flush()

    def broadcasts_for(self, count: int, share: float) -> int:
        """How many of `count` notifications to make broadcasts, so that `share` of what a user sees are."""
        if count < 100 or share <= 0:
            return 0
        per_user = share / (1 - share)  # broadcasts per targeted notification a user gets
        return max(1, round(count * per_user / (len(self.users) + per_user)))

    async def population(self, count: int, *, read_share: float, broadcast_share: float) -> None:
        """`count` more notifications, targeted and broadcast, over every user."""
        broadcasts = self.broadcasts_for(count, broadcast_share)
        at = sorted(self.rng.sample(range(count), broadcasts))
        made = 0
        while made < count:
            if at and made >= at[0]:
                at.pop(0)
                await self.broadcast()
                made += 1
                continue
            size = min(self.dispatch_size(), count - made, at[0] - made if at else count)
            await self.targeted(self.next_recipients(size), read_share=read_share)
            made += size
        await self.writer.flush()
        await self.watermarks()

    async def bind(self) -> None:
        """The Beanie models, on the bench's database (to build and read documents as the server does)."""
        if not self.bound:
            await init_beanie(database=self.db, document_models=ALL_DOCUMENTS, skip_indexes=True)
            self.bound = True

    async def sync(self) -> None:
        """Continue the server's numbering: it made broadcasts and sends of its own (the measured operations)
        since the last step. First wait until it has folded the reads those made, so that the counters merged
        below are not written by both at once."""
        for _ in range(600):
            if not await self.db[ReadTally.Settings.name].find_one({}) and not await self.db[
                CoverageTally.Settings.name
            ].find_one({}):
                break
            await asyncio.sleep(0.1)
        else:
            raise CheckFailed("the server did not fold its read tallies within 60 s")
        index = await self.db[BroadcastIndex.Settings.name].find_one({"_id": "broadcasts"})
        if index is not None:
            self.made = index["made"]
            self.page_starts = list(index["page_starts"])
            self.newest_broadcast = index["newest_id"]
        counter = None
        if self.isolation.redis_url:
            client = aioredis.Redis.from_url(self.isolation.redis_url)
            try:
                counter = await client.get(self.counter_key)
            finally:
                await client.aclose()
        chunks = await self.db[DispatchLogChunk.Settings.name].find({}).to_list()
        if chunks:
            self.log_pages = sorted(
                mark for chunk in chunks for mark in zip(chunk["pages"], chunk["starts"], chunk["opened"], strict=True)
            )
        if self.isolation.redis_url:
            # The server's sends numbered in inboxes too (any user's, the admin's included).
            everyone = [self.admin.id, *(user.id for user in self.users)]
            client = aioredis.Redis.from_url(self.isolation.redis_url)
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for user in everyone:
                        pipe.hget(self.inbox_counter_key(user), "n")
                    numbers = await pipe.execute()
            finally:
                await client.aclose()
            for user, number in zip(everyone, numbers, strict=True):
                if number is not None:
                    self.inbox_numbers[user] = max(self.inbox_numbers.get(user, 0), int(number) + 1)
        if counter is not None:
            self.dispatches = int(counter) + 1
        elif self.log_pages:
            self.dispatches = (max(page for page, _, _ in self.log_pages) + 1) * LOG_PAGE_SIZE

    @property
    def counter_key(self) -> str:
        return f"{self.isolation.prefix}dispatch_log:number"

    def inbox_counter_key(self, user: ObjectId) -> str:
        return f"{self.isolation.prefix}inbox:{user}"

    async def bookkeeping(self) -> None:
        """What the server keeps beside the documents, brought up to date with what this step seeded: the broadcast
        index, the log of sends (and its counter in Redis), and the folded read counts (per log page; read-alls as
        the coverage of the broadcasts each watermarked user's read-all covered)."""
        await self.bind()
        index = BroadcastIndex(
            made=self.made,
            page_starts=self.page_starts,
            newest_id=self.newest_broadcast,
        )
        await self.db[BroadcastIndex.Settings.name].replace_one(
            {"_id": "broadcasts"}, index.model_dump(by_alias=True), upsert=True
        )
        by_chunk: dict[int, list[tuple[int, ObjectId, ObjectId]]] = {}
        for mark in self.log_pages:
            by_chunk.setdefault(chunk_of(mark[0]), []).append(mark)
        for number, marks in by_chunk.items():
            chunk = DispatchLogChunk(
                id=number,
                pages=[page for page, _, _ in marks],
                starts=[start for _, start, _ in marks],
                opened=[opened for _, _, opened in marks],
            )
            await self.db[DispatchLogChunk.Settings.name].replace_one(
                {"_id": number}, chunk.model_dump(by_alias=True), upsert=True
            )
        directory = DispatchLogDirectory(
            chunks=sorted(by_chunk),
            chunk_starts=[min(start for _, start, _ in by_chunk[number]) for number in sorted(by_chunk)],
            backfilled=True,
        )
        await self.db[DispatchLogDirectory.Settings.name].replace_one(
            {"_id": "dispatch_log"}, directory.model_dump(by_alias=True), upsert=True
        )
        counters = self.db[ReadCounter.Settings.name]
        for page, reads in self.new_reads.items():
            stored = await counters.find_one({"_id": page}) or ReadCounter(id=page).model_dump(by_alias=True)
            for dispatch_id, count in reads.items():
                stored["reads"][dispatch_id] = stored["reads"].get(dispatch_id, 0) + count
            await counters.replace_one({"_id": page}, stored, upsert=True)
        self.new_reads = {}
        pages = self.db[CoveragePage.Settings.name]
        summary = await self.db[CoverageSummary.Settings.name].find_one({"_id": "summary"}) or (
            CoverageSummary().model_dump(by_alias=True)
        )
        for position, change in self.new_coverage:
            number, offset = divmod(position, BROADCAST_PAGE_SIZE)
            stored = await pages.find_one({"_id": number}) or CoveragePage(id=number).model_dump(by_alias=True)
            stored["diff"][offset] += change
            await pages.replace_one({"_id": number}, stored, upsert=True)
            summary["totals"].extend([0] * (number + 1 - len(summary["totals"])))
            summary["totals"][number] += change
        await self.db[CoverageSummary.Settings.name].replace_one({"_id": "summary"}, summary, upsert=True)
        self.new_coverage = []
        inboxes = self.db[Inbox.Settings.name]
        await gather_bounded(
            inboxes.update_one(
                {"_id": user}, {"$max": {"top_page": (self.inbox_numbers[user] - 1) // INBOX_PAGE_SIZE}}, upsert=True
            )
            for user in self.inbox_pages_opened
        )
        self.inbox_pages_opened = set()
        if self.isolation.redis_url:
            client = aioredis.Redis.from_url(self.isolation.redis_url)
            try:
                await client.set(self.counter_key, self.dispatches - 1)
                async with client.pipeline(transaction=False) as pipe:
                    for user, number in self.inbox_numbers.items():
                        pipe.hset(self.inbox_counter_key(user), mapping={"n": number - 1, "last": ""})
                    await pipe.execute()
            finally:
                await client.aclose()

    def dispatch_size(self) -> int:
        draw = self.rng.random()
        size = 1 if draw < 0.8 else self.rng.randint(2, 10) if draw < 0.98 else self.rng.randint(20, 200)
        return min(size, len(self.users))

    def next_recipients(self, size: int) -> list[ObjectId]:
        """Round the shuffled user list, so that every user gets about as many; distinct within a send."""
        if self.cursor + size > len(self.cycle):
            self.cycle = [user.id for user in self.users]
            self.rng.shuffle(self.cycle)
            self.cursor = 0
        chosen = self.cycle[self.cursor : self.cursor + size]
        self.cursor += size
        return chosen

    def content(self) -> tuple[str, str, dict[str, Any] | None]:
        self.sent += 1
        kind, title = self.rng.choice(KINDS)
        body = f"{title}. Open the app for the details of item #{self.sent}; sent by the scale benchmark."
        return title, body, {"kind": kind, "ref": self.sent} if self.rng.random() < 0.6 else None

    async def targeted(self, recipients: Sequence[ObjectId], *, read_share: float = 0.0, unread: bool = False) -> None:
        """One send, as NotificationService.send stores it: a Dispatch, then a notification per recipient."""
        now = utcnow()
        dispatch_id = new_id()
        title, body, data = self.content()
        by_admin = self.rng.random() < 0.8
        sender_id = self.admin.id if by_admin else None
        reads = 0
        for recipient in recipients:
            notification_id = new_id()
            read = not unread and (recipient in self.watermarked or self.rng.random() < read_share)
            reads += read
            number = self.inbox_numbers.get(recipient, 0)
            self.inbox_numbers[recipient] = number + 1
            if number % INBOX_PAGE_SIZE == 0:
                self.inbox_pages_opened.add(recipient)
                await self.writer.add(
                    InboxPage.Settings.name,
                    {
                        "_id": inbox_page_key(recipient, number // INBOX_PAGE_SIZE),
                        "user_id": recipient,
                        "start": notification_id,
                        "created_day": day_number(now),
                    },
                )
            await self.writer.add(
                Notification.Settings.name,
                {
                    "_id": notification_id,
                    "recipient_id": recipient,
                    "unread_by": None if read else recipient,
                    "title": title,
                    "body": body,
                    "data": data,
                    "sender_id": sender_id,
                    "dispatch_id": dispatch_id,
                    "read_at": now if read else None,
                    "broadcast_seq": None,
                    "broadcast_page": None,
                    "created_at": now,
                    "created_day": day_number(now),
                    "inbox_page": inbox_page_key(recipient, number // INBOX_PAGE_SIZE),
                },
            )
            if recipient == self.probe.user.id:
                self.probe.sees(str(notification_id))
                if not read:
                    self.probe.unread.append(str(notification_id))
        await self.writer.add(
            Dispatch.Settings.name,
            {
                "_id": dispatch_id,
                "sender_id": sender_id,
                "sender_email": self.admin.email if by_admin else None,
                "title": title,
                "body": body,
                "broadcast": False,
                "recipient_count": len(recipients),
                "broadcast_seq": None,
                "log_page": self.log_page(dispatch_id, reads),
                "created_at": now,
                "created_day": day_number(now),
            },
        )

    def log_page(self, dispatch_id: ObjectId, reads: int) -> int:
        """The next number of the log of sends, as services/dispatch_log.py gives it; and the send's read count."""
        number = self.dispatches
        self.dispatches += 1
        page = number // LOG_PAGE_SIZE
        if number % LOG_PAGE_SIZE == 0:
            self.log_pages.append((page, dispatch_id, dispatch_id))
        if reads:
            self.new_reads.setdefault(page, {})[str(dispatch_id)] = reads
        return page

    async def broadcast(self) -> None:
        """A broadcast: its Dispatch and one notification sharing its id; some users read it (receipts)."""
        now = utcnow()
        broadcast_id = new_id()
        seq = self.made
        self.made += 1
        if seq % BROADCAST_PAGE_SIZE == 0:
            self.page_starts.append(broadcast_id)
        title = self.rng.choice(ANNOUNCEMENTS)
        body = f"{title}. Read more on our blog; sent by the scale benchmark."
        common = {
            "title": title,
            "body": body,
            "sender_id": self.admin.id,
            "broadcast_seq": seq,
            "created_at": now,
            "created_day": day_number(now),
        }
        await self.writer.add(
            Notification.Settings.name,
            {
                **common,
                "_id": broadcast_id,
                "recipient_id": None,
                "unread_by": None,
                "data": None,
                "dispatch_id": broadcast_id,
                "read_at": None,
                "broadcast_page": seq // BROADCAST_PAGE_SIZE,
            },
        )
        self.broadcasts.append(broadcast_id)
        self.newest_broadcast = broadcast_id
        self.probe.sees(str(broadcast_id))
        readers = self.rng.sample(self.receipt_readers, round(len(self.receipt_readers) * RECEIPT_SHARE))
        if len(self.broadcasts) % 2 == 1 and self.probe.user.id not in readers:
            readers.append(self.probe.user.id)  # the probe reads every other broadcast
        for reader in readers:
            await self.writer.add(
                BroadcastReceipt.Settings.name,
                {"_id": new_id(), "notification_id": broadcast_id, "user_id": reader, "created_day": day_number(now)},
            )
        await self.writer.add(
            Dispatch.Settings.name,
            {
                **common,
                "_id": broadcast_id,
                "sender_email": self.admin.email,
                "broadcast": True,
                "recipient_count": 1,
                "log_page": self.log_page(broadcast_id, len(readers)),
            },
        )

    async def watermarks(self) -> None:
        """The users who did read-all: their Inbox's watermark is the newest broadcast (the server's included), and
        their read-alls covered every broadcast up to it."""
        if self.newest_broadcast is None or not self.watermarked:
            return
        newest = self.newest_broadcast
        if self.covered_through < self.made:
            readers = len(self.watermarked)
            self.new_coverage += [(self.covered_through, readers), (self.made, -readers)]
            self.covered_through = self.made
        # Upserts: the server's own sends may have made some of these Inboxes (their inbox pages).
        inboxes = self.db[Inbox.Settings.name]
        await gather_bounded(
            inboxes.update_one({"_id": oid}, {"$set": {"broadcasts_read_through": newest}}, upsert=True)
            for oid in self.watermarked
        )
        self.inboxes_created = True

    async def start(self, users: int) -> None:
        """The users, then the probe's own history."""
        await self.create_users(users)
        await self.probe_history(PROBE_HISTORY)
        await self.bookkeeping()

    async def grow(self, count: int, reps: int, *, read_share: float, broadcast_share: float) -> None:
        """`count` more notifications for everyone, and enough unread ones of the probe to mark read."""
        await self.sync()
        await self.population(count, read_share=read_share, broadcast_share=broadcast_share)
        await self.top_up_probe_unread(reps)
        await self.bookkeeping()

    async def step(self, work: Awaitable[None]) -> Step:
        notifications, documents, started = self.notifications, self.writer.total(), time.monotonic()
        self.writer.begin()
        await work
        return Step(self.notifications - notifications, self.writer.total() - documents, time.monotonic() - started)

    async def validate(self) -> None:
        """Read one seeded document of each kind through the Beanie models: they must parse as the server's do."""
        await self.bind()
        user = await User.get(self.probe.user.id)
        if user is None or user.email_key != email_key(user.email) or user.is_admin:
            raise CheckFailed(f"the probe user does not read back: {user}")
        newest = await Notification.get(ObjectId(self.probe.visible[-1]))
        if newest is None or newest.dispatch_id is None or await Dispatch.get(newest.dispatch_id) is None:
            raise CheckFailed("the probe's newest notification or its dispatch does not read back")
        if self.writer.written.get(BroadcastReceipt.Settings.name) and await BroadcastReceipt.find_one({}) is None:
            raise CheckFailed("the seeded broadcast receipts do not read back")
        if self.inboxes_created and await Inbox.get(next(iter(self.watermarked))) is None:
            raise CheckFailed("the seeded inboxes do not read back")


# Measuring


@dataclass
class OpResult:
    label: str
    samples_ms: list[float] = field(default_factory=list)
    ferretdb_cpu_ms: list[float] = field(default_factory=list)
    server_cpu_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failures: dict[str, list[float]] = field(default_factory=dict)  # kind: how long each failed repetition took
    timeouts: int = 0
    seconds: float = 0.0

    def failed(self, exc: Exception, elapsed_ms: float) -> None:
        self.errors.append(f"{type(exc).__name__}: {exc}")
        kind = exc.kind if isinstance(exc, CheckFailed) else type(exc).__name__
        self.failures.setdefault(kind, []).append(elapsed_ms)

    def cell(self) -> str:
        parts = []
        if self.samples_ms:
            p50, p99 = percentile(self.samples_ms, 0.50), percentile(self.samples_ms, 0.99)
            parts.append(f"{p50:,.1f} / {p99:,.1f} (n={len(self.samples_ms)})")
        if self.timeouts:
            parts.append(f"timed out ({self.timeouts})")
        for kind, took in self.failures.items():
            parts.append(f"{len(took)} failed: {kind} after {percentile(took, 0.5):,.0f} ms")
        return "; ".join(parts) or "-"

    def cpu_cell(self) -> str:
        def mean(values: list[float]) -> str:
            finite = [value for value in values if value == value]  # NaN: the process could not be read
            return f"{sum(finite) / len(finite):,.1f}" if finite else "-"

        return f"{mean(self.ferretdb_cpu_ms)} / {mean(self.server_cpu_ms)}" if self.samples_ms else "-"

    def as_json(self) -> dict[str, Any]:
        return {
            "n": len(self.samples_ms),
            "p50_ms": percentile(self.samples_ms, 0.50) if self.samples_ms else None,
            "p99_ms": percentile(self.samples_ms, 0.99) if self.samples_ms else None,
            "samples_ms": [round(value, 3) for value in self.samples_ms],
            "ferretdb_cpu_ms": [round(value, 1) for value in self.ferretdb_cpu_ms],
            "server_cpu_ms": [round(value, 1) for value in self.server_cpu_ms],
            "errors": self.errors,
            "failures_ms": {kind: [round(value, 1) for value in took] for kind, took in self.failures.items()},
            "timeouts": self.timeouts,
            "seconds": round(self.seconds, 2),
        }


def process_cpu(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return float("nan")


class Timer:
    """Times the block it wraps: wall clock, and the CPU the server and FerretDB spent meanwhile."""

    def __init__(self, server_pid: int, ferretdb_pid: int | None) -> None:
        self.pids = (server_pid, ferretdb_pid)
        self.wall_ms: float | None = None
        self.cpu_ms = (0.0, 0.0)
        self._start = 0.0
        self._cpu = (0.0, 0.0)

    def __enter__(self) -> Timer:
        self._cpu = (process_cpu(self.pids[0]), process_cpu(self.pids[1]))
        self._start = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            return
        self.wall_ms = (time.perf_counter() - self._start) * 1000
        self.cpu_ms = (
            (process_cpu(self.pids[0]) - self._cpu[0]) * 1000,
            (process_cpu(self.pids[1]) - self._cpu[1]) * 1000,
        )

    def record(self, result: OpResult) -> None:
        if self.wall_ms is None:
            raise CheckFailed("the operation did not time anything")
        result.samples_ms.append(self.wall_ms)
        result.server_cpu_ms.append(self.cpu_ms[0])
        result.ferretdb_cpu_ms.append(self.cpu_ms[1])


@dataclass(frozen=True)
class Op:
    key: str
    label: str
    rep: Callable[[Timer], Awaitable[None]]
    cleanup: Callable[[], Awaitable[None]] | None = None


@dataclass
class SizeResult:
    size: int
    step: Step
    counts: dict[str, int]
    load_before_seeding: tuple[float, float, float]
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    database_bytes: int | None = None
    ops: dict[str, OpResult] = field(default_factory=dict)
    restarts: list[str] = field(default_factory=list)


class Bench:
    """The server, its clients and tokens, and the operations measured against it."""

    def __init__(self, args: argparse.Namespace, server: ServerProcess, seeder: Seeder, bare: ServerProcess) -> None:
        self.args = args
        self.server = server
        self.bare = bare
        self.seeder = seeder
        self.probe = seeder.probe
        self.rng = random.Random(args.seed + 1)
        self.ferretdb_pid = pid_listening_on(urlsplit(MONGODB_URL).port or 27017)
        self.http: aiohttp.ClientSession | None = None
        self.panel: aiohttp.ClientSession | None = None
        self.probe_token = self.admin_token = ""
        self.logged_in_at = -1e9
        self.resume_ws: aiohttp.ClientWebSocketResponse | None = None
        fresh = [u for u in seeder.users[1:] if u.active and u.id not in seeder.watermarked]
        self.rng.shuffle(fresh)
        self.fresh_users: Iterator[SeedUser] = iter(fresh)
        recipients = [u.id for u in seeder.users[1:]]
        self.rng.shuffle(recipients)
        self.recipients: Iterator[ObjectId] = itertools.cycle(recipients)
        self.restarts: list[str] = []
        self.ops = [
            Op("bare", "bare aiohttp: GET, a constant JSON (the floor)", self.op_bare),
            Op("login", "login (POST /auth/login)", self.op_login),
            Op("me", "GET /users/me", self.op_me),
            Op("first_page", "GET /notifications, first page (limit=20)", self.op_first_page),
            Op("deep_page", "GET /notifications, deep page (before=, limit=20)", self.op_deep_page),
            Op("unread_count", "GET /notifications/unread-count", self.op_unread_count),
            Op("ws_ready", "WebSocket connect → ready", self.op_ws_ready),
            Op("resume", "WebSocket resume, 100 replayed", self.op_resume, self.close_resume_socket),
            Op("user_search", "admin: GET /users?q=<email prefix>", self.op_user_search),
            Op("panel_log", "panel: GET /admin/notifications (read counts)", self.op_panel_log),
            Op("mark_read", "mark one read (POST /notifications/{id}/read)", self.op_mark_read),
            Op("read_all", "read-all, a fresh user (POST /notifications/read-all)", self.op_read_all),
            Op(
                "read_all_cleanup",
                "read-all's clean-up in the background, until all are marked",
                self.op_read_all_cleanup,
            ),
            Op("send_one", "admin: send to one user (POST /notifications)", self.op_send_one),
            Op("broadcast", "admin: broadcast (POST /notifications)", self.op_broadcast),
        ]

    @property
    def base(self) -> str:
        return self.server.url

    # Clients and tokens

    async def open_clients(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        self.http = aiohttp.ClientSession(timeout=timeout)
        # The panel's cookies come from 127.0.0.1, which the default jar refuses (cookies of IP addresses).
        self.panel = aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.logged_in_at = -1e9

    async def close_clients(self) -> None:
        await self.close_resume_socket()
        for session in (self.http, self.panel):
            if session is not None:
                await session.close()
        self.http = self.panel = None

    def client(self) -> aiohttp.ClientSession:
        assert self.http is not None, "open_clients first"
        return self.http

    async def ensure_logged_in(self) -> None:
        """The probe's and the admin's tokens and the panel's session, fresh enough for a long operation."""
        if time.monotonic() - self.logged_in_at < TOKEN_REFRESH_SECONDS:
            return
        self.probe_token, _ = await login(self.client(), self.base, self.probe.user.email)
        self.admin_token, _ = await login(self.client(), self.base, self.seeder.admin.email)
        await self.panel_login()
        self.logged_in_at = time.monotonic()

    async def panel_login(self) -> None:
        """The login form: its page sets the CSRF cookie, and the form posts the same token back."""
        assert self.panel is not None
        self.panel.cookie_jar.clear()
        async with self.panel.get(f"{self.base}/admin/login") as response:
            page = await response.text()
            found = CSRF_INPUT.search(page)
            if response.status != 200 or found is None:
                raise CheckFailed(f"panel login page: {response.status}")
        form = {"csrf_token": html.unescape(found.group(1)), "email": self.seeder.admin.email, "password": PASSWORD}
        async with self.panel.post(f"{self.base}/admin/login", data=form, allow_redirects=False) as response:
            await response.read()
            if response.status != 303 or not any(m.key == SESSION_COOKIE for m in self.panel.cookie_jar):
                raise CheckFailed(f"panel login: {response.status}")

    async def restart_server(self, why: str) -> None:
        """After a timeout: the server may still be working on the abandoned request; a fresh process is not."""
        log(f"restarting the server ({why})")
        self.restarts.append(why)
        await self.close_clients()
        await asyncio.to_thread(self.server.stop)
        self.server.log.rename(self.server.log.with_suffix(f".{len(self.restarts)}.log"))
        await self.server.launch()
        await self.open_clients()

    # HTTP

    async def call(
        self, method: str, path: str, *, token: str, expect: int = 200, body: dict[str, Any] | None = None
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.client().request(method, self.base + path, headers=headers, json=body) as response:
            raw = await response.read()
            if response.status != expect:
                raise CheckFailed(f"{method} {path}: {response.status} {raw[:300]!r}", str(response.status))
            return json.loads(raw) if raw else None

    def check_page(self, page: Any, expected: Sequence[str]) -> None:
        ids = [item["id"] for item in page["items"]]
        if ids != list(reversed(expected)):
            raise CheckFailed(f"the page is not what was seeded: {ids[:3]}... instead of {list(expected)[-3:]}...")

    # The operations: each times only its own request(s) with the Timer, after any set-up it needs

    async def op_bare(self, timer: Timer) -> None:
        """The same client and machine against bench/bare_app.py: what a request costs with nothing behind it."""
        with timer:
            async with self.client().get(f"{self.bare.url}{API}/users/me") as response:
                body = await response.json()
        if response.status != 200 or "id" not in body:
            raise CheckFailed(f"the bare server answered {response.status}")

    async def op_login(self, timer: Timer) -> None:
        with timer:
            access, _ = await login(self.client(), self.base, self.probe.user.email)
        self.probe_token = access

    async def op_me(self, timer: Timer) -> None:
        with timer:
            me = await self.call("GET", f"{API}/users/me", token=self.probe_token)
        if me["id"] != str(self.probe.user.id):
            raise CheckFailed(f"/users/me is someone else: {me['id']}")

    async def op_first_page(self, timer: Timer) -> None:
        with timer:
            page = await self.call("GET", f"{API}/notifications?limit={PAGE}", token=self.probe_token)
        self.check_page(page, self.probe.visible[-PAGE:])

    async def op_deep_page(self, timer: Timer) -> None:
        before = self.probe.visible[DEEP_INDEX]
        path = f"{API}/notifications?limit={PAGE}&before={before}"
        with timer:
            page = await self.call("GET", path, token=self.probe_token)
        self.check_page(page, self.probe.visible[DEEP_INDEX - PAGE : DEEP_INDEX])

    async def op_unread_count(self, timer: Timer) -> None:
        with timer:
            body = await self.call("GET", f"{API}/notifications/unread-count", token=self.probe_token)
        if not isinstance(body.get("unread"), int):
            raise CheckFailed(f"unread-count: {body}")

    async def connect(self) -> aiohttp.ClientWebSocketResponse:
        """A socket of the probe, open once "ready" arrived."""
        headers = {"Authorization": f"Bearer {self.probe_token}"}
        ws = await self.client().ws_connect(f"ws://{HOST}:{self.server.port}{API}/ws", headers=headers)
        try:
            await self.receive(ws, "ready")
        except BaseException:
            await ws.close()
            raise
        return ws

    @staticmethod
    async def receive(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
        while True:
            message = await ws.receive()
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise CheckFailed(
                    f"the socket ended ({message.type.name}, close code {ws.close_code})", f"close {ws.close_code}"
                )
            body: dict[str, Any] = json.loads(message.data)
            if body.get("type") == kind:
                return body
            if body.get("type") == "error":
                raise CheckFailed(f"the socket answered an error: {body}")

    async def op_ws_ready(self, timer: Timer) -> None:
        with timer:
            ws = await self.connect()
        await ws.close()

    async def op_resume(self, timer: Timer) -> None:
        if self.resume_ws is None or self.resume_ws.closed:
            self.resume_ws = await self.connect()
        ws, after, expected = self.resume_ws, self.probe.visible[-REPLAYED - 1], self.probe.visible[-REPLAYED:]
        try:
            with timer:
                await ws.send_json({"type": "resume", "after": after})
                for wanted in expected:
                    got = (await self.receive(ws, "notification"))["notification"]["id"]
                    if got != wanted:
                        raise CheckFailed(f"resume replayed {got}, expected {wanted}")
        except BaseException:
            await self.close_resume_socket()  # frames of this replay may still come: the next one starts afresh
            raise

    async def close_resume_socket(self) -> None:
        if self.resume_ws is not None:
            await self.resume_ws.close()
            self.resume_ws = None

    async def op_user_search(self, timer: Timer) -> None:
        local = self.rng.choice(self.seeder.users[1:]).email.split("@")[0]
        first, _, rest = local.partition(".")
        query = f"{first}.{rest[:2]}"  # an admin typing the start of an address
        with timer:
            page = await self.call("GET", f"{API}/users?q={query}", token=self.admin_token)
        if not page["items"] or not all(item["email"].startswith(query) for item in page["items"]):
            raise CheckFailed(f"user search for {query!r} found {len(page['items'])} users, or the wrong ones")

    async def op_panel_log(self, timer: Timer) -> None:
        assert self.panel is not None
        with timer:
            async with self.panel.get(f"{self.base}/admin/notifications", allow_redirects=False) as response:
                page = await response.text()
        if response.status != 200:
            raise CheckFailed(f"panel notification log: {response.status}", str(response.status))
        if "<table" not in page:
            raise CheckFailed("panel notification log: no table")

    async def op_mark_read(self, timer: Timer) -> None:
        if not self.probe.unread:
            raise CheckFailed("the probe has no unread notification left to mark")
        notification_id = self.probe.unread.pop(self.rng.randrange(len(self.probe.unread)))
        with timer:
            await self.call("POST", f"{API}/notifications/{notification_id}/read", token=self.probe_token, expect=204)

    async def op_read_all(self, timer: Timer) -> None:
        user = next(self.fresh_users, None)
        if user is None:
            raise CheckFailed("no user left who never read all: seed more users")
        token, _ = await login(self.client(), self.base, user.email)
        with timer:
            await self.call("POST", f"{API}/notifications/read-all", token=token, expect=204)
        # Its background clean-up is measured by the next operation, not left to slow down the ones after.
        await self.cleared(user)

    async def op_read_all_cleanup(self, timer: Timer) -> None:
        user = next(self.fresh_users, None)
        if user is None:
            raise CheckFailed("no user left who never read all: seed more users")
        token, _ = await login(self.client(), self.base, user.email)
        await self.call("POST", f"{API}/notifications/read-all", token=token, expect=204)
        with timer:
            await self.cleared(user)

    async def cleared(self, user: SeedUser) -> None:
        """Wait until the read-all's clean-up has marked every notification it covered (polled every 10 ms)."""
        notifications = self.seeder.db[Notification.Settings.name]
        deadline = time.monotonic() + CLEANUP_SECONDS
        while await notifications.find_one({"unread_by": user.id}, {"_id": 1}) is not None:
            if time.monotonic() > deadline:
                raise CheckFailed(f"the read-all clean-up did not finish within {CLEANUP_SECONDS:.0f} s")
            await asyncio.sleep(0.01)

    async def op_send_one(self, timer: Timer) -> None:
        body = {
            "title": "bench send",
            "body": "One user, from the scale benchmark.",
            "user_ids": [str(next(self.recipients))],
        }
        with timer:
            await self.call("POST", f"{API}/notifications", token=self.admin_token, expect=201, body=body)

    async def op_broadcast(self, timer: Timer) -> None:
        body = {"title": "bench broadcast", "body": "Everyone, from the scale benchmark.", "broadcast": True}
        with timer:
            sent = await self.call("POST", f"{API}/notifications", token=self.admin_token, expect=201, body=body)
        self.probe.sees(sent["notifications"][0]["id"])  # the probe is older: it sees every broadcast

    # The harness

    async def measure(self, op: Op) -> OpResult:
        result = OpResult(op.label)
        started = time.monotonic()
        try:
            for rep in range(self.args.reps):
                if rep and time.monotonic() - started >= self.args.op_seconds:
                    break
                timer = Timer(self.server.pid, self.ferretdb_pid)
                rep_started = time.perf_counter()
                try:
                    async with asyncio.timeout(self.args.timeout):
                        await self.ensure_logged_in()
                        await op.rep(timer)
                    timer.record(result)
                except TimeoutError:
                    result.timeouts += 1
                    await self.restart_server(f"{op.key}: no answer within {self.args.timeout:g} s")
                    break
                # RuntimeError: bench.common's login helper; the others: an answer of the wrong shape.
                except (aiohttp.ClientError, CheckFailed, RuntimeError, KeyError, TypeError, ValueError) as exc:
                    result.failed(exc, (time.perf_counter() - rep_started) * 1000)
                    log(f"  {op.key} failed: {type(exc).__name__}: {exc}")
                    if len(result.errors) >= MAX_ERRORS:
                        break
        finally:
            if op.cleanup is not None:
                await op.cleanup()
        result.seconds = time.monotonic() - started
        return result

    async def measure_size(self, size: SizeResult) -> None:
        size.load_before = load_average()
        restarts = len(self.restarts)
        for op in self.ops:
            result = await self.measure(op)
            size.ops[op.key] = result
            log(f"  {op.label}: {result.cell()} in {result.seconds:.1f} s")
        size.load_after = load_average()
        size.restarts = self.restarts[restarts:]


# Report


def fmt_load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.2f}" for value in load)


def ferretdb_version(db_info: dict[str, Any], pid: int | None) -> str:
    """FerretDB's own version (buildInfo, else the name of the running binary) and the MongoDB version it speaks."""
    version = str(db_info.get("ferretdbVersion") or "unknown")
    if version == "unknown" and pid is not None:
        try:
            found = re.search(r"v\d+\.\d+\.\d+", os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            found = None
        version = f"{found.group(0)} (from its binary's name)" if found else version
    return f"{version}, MongoDB wire version {db_info.get('version', '?')}"


def ferretdb_backend(pid: int | None) -> str:
    """The storage of the FerretDB that answers (from its command line): PostgreSQL or SQLite."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid is not None else []
    except OSError:
        argv = []
    return "PostgreSQL" if b"postgresql" in argv else "SQLite" if argv else "unknown"


def machine() -> str:
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {memory}, {platform.system()} {platform.release()}"


def report(meta: dict[str, Any], sizes: list[SizeResult], bench: Bench) -> str:
    head = [f"{size.size:,}" for size in sizes]
    lines = [
        f"## tidings at scale: {meta['users']:,} users (+1 admin), {meta['reps']} repetitions per operation "
        f"(fewer once it has taken {meta['op_seconds']:g} s, at least 1; each bounded by {meta['timeout']:g} s)",
        "",
        f"- {meta['date']}; {meta['machine']}",
        f"- Python {meta['python']}; FerretDB {meta['ferretdb']} ({meta.get('backend', '?')}); Redis on 127.0.0.1",
        f"- server: one `tidings serve` process (uvloop); {meta['server']}",
        f"- seeding: {meta['users']:,} users and the probe's {PROBE_HISTORY} notifications in "
        f"{meta['users_seconds']:.1f} s (one argon2id hash, reused); "
        f"notifications {meta['read_share']:.0%} read, about {meta['broadcast_share']:.0%} of each user's are "
        f"broadcasts; direct insert_many, {meta['batch']} documents a call",
        "",
        "Latency in ms, p50 / p99 (n) as the client sees it; columns: notifications seeded for the users.",
        "",
        "| operation | " + " | ".join(head) + " |",
        "| --- | " + " | ".join("---" for _ in sizes) + " |",
    ]

    def row(label: str, cells: Sequence[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for op in bench.ops:
        row(op.label, [size.ops[op.key].cell() if op.key in size.ops else "-" for size in sizes])
    row(
        "documents: notifications / dispatches / receipts / inboxes",
        [
            " / ".join(
                f"{size.counts.get(name, 0):,}" for name in ("notifications", "dispatches", "receipts", "inboxes")
            )
            for size in sizes
        ],
    )
    row(
        "database size (dbStats totalSize)",
        [f"{size.database_bytes / 2**20:,.0f} MiB" if size.database_bytes else "-" for size in sizes],
    )
    row(
        "seeding this step",
        [
            f"+{size.step.notifications:,} notifications, {size.step.documents:,} documents in "
            f"{size.step.seconds:,.1f} s ({size.step.documents / max(size.step.seconds, 1e-9):,.0f}/s)"
            for size in sizes
        ],
    )
    row("load average before seeding", [fmt_load(size.load_before_seeding) for size in sizes])
    row("load average before measuring", [fmt_load(size.load_before) for size in sizes])
    row("load average after measuring", [fmt_load(size.load_after) for size in sizes])
    row("server restarts (after a timeout)", [", ".join(size.restarts) or "0" for size in sizes])
    lines += [
        "",
        "CPU time per operation in ms (mean): FerretDB / the tidings server. FerretDB is shared: its figure includes "
        "anything else running against it meanwhile; /proc counts in 10 ms ticks, so small figures are averages of "
        "ticks.",
        "",
        "| operation | " + " | ".join(head) + " |",
        "| --- | " + " | ".join("---" for _ in sizes) + " |",
    ]
    for op in bench.ops:
        row(op.label, [size.ops[op.key].cpu_cell() if op.key in size.ops else "-" for size in sizes])
    failures = [
        f"- {size.size:,}, {result.label}: {error}"
        for size in sizes
        for result in size.ops.values()
        for error in result.errors[:1]
    ]
    if failures:
        lines += ["", "Failures (the first of each operation and size):", "", *failures]
    if any("503" in result.failures for size in sizes for result in size.ops.values()):
        lines += [
            "",
            f"503: the server gave up on MongoDB after MONGODB_TIMEOUT ({meta['mongodb_timeout']:g} s), as it does "
            "for every operation; a socket whose set-up does is closed with 4000. `--mongodb-timeout S` raises it, "
            "to time those operations to their end.",
        ]
    return "\n".join(lines)


def server_settings(env: dict[str, str]) -> str:
    """What the server runs with, next to the defaults it would have without the bench."""
    settings = Settings.from_env(env)
    return (
        f"ACCESS_LOG={int(settings.access_log)} (default {int(Settings.access_log)}), "
        f"LOG_LEVEL={settings.log_level} (default {Settings.log_level}), "
        f"PASSWORD_TIME_COST={settings.password_time_cost} and PASSWORD_MEMORY_KIB={settings.password_memory_kib} "
        f"(defaults {Settings.password_time_cost} and {Settings.password_memory_kib}), login rate limits lifted "
        f"(defaults {Settings.login_attempts_per_address} per address, {Settings.login_attempts_per_account} failures "
        f"per account in {Settings.login_window_seconds} s), MONGODB_TIMEOUT={settings.mongodb_timeout:g} s "
        f"(default {Settings.mongodb_timeout:g}), other settings at their defaults"
    )


# The run


async def database_bytes(db: AsyncDatabase[Doc]) -> int | None:
    try:
        stats = await db.command("dbStats")
    except Exception:  # only a figure for the report
        return None
    total = stats.get("totalSize")
    return int(total) if isinstance(total, int | float) else None


def counts(seeder: Seeder) -> dict[str, int]:
    written = seeder.writer.written
    return {
        "users": written.get(User.Settings.name, 0),
        "notifications": written.get(Notification.Settings.name, 0),
        "dispatches": written.get(Dispatch.Settings.name, 0),
        "receipts": written.get(BroadcastReceipt.Settings.name, 0),
        # Seeded by upserts: every user with inbox pages, and those who did read-all.
        "inboxes": len(set(seeder.inbox_numbers) | (seeder.watermarked if seeder.inboxes_created else set())),
    }


def results_json(meta: dict[str, Any], sizes: list[SizeResult]) -> dict[str, Any]:
    return {
        "meta": meta,
        "sizes": [
            {
                "size": size.size,
                "counts": size.counts,
                "database_bytes": size.database_bytes,
                "seeding": vars(size.step),
                "load_before_seeding": size.load_before_seeding,
                "load_before": size.load_before,
                "load_after": size.load_after,
                "restarts": size.restarts,
                "ops": {key: {"label": op.label, **op.as_json()} for key, op in size.ops.items()},
            }
            for size in sizes
        ],
    }


def write_json(path: str, document: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(document, indent=2) + "\n")
    log(f"wrote {path}")


async def run(args: argparse.Namespace) -> int:
    return await run_interruptible(lambda: run_sizes(args))


async def run_sizes(args: argparse.Namespace) -> int:
    log_dir = bench_log_dir()
    isolation = Isolation.new("bench", "scale")
    extra = {} if args.mongodb_timeout is None else {"MONGODB_TIMEOUT": str(args.mongodb_timeout)}
    server = tidings_server("tidings-scale", isolation, log_dir, access_log=args.access_log, **extra)
    bare = script_server("bare-scale", Path(__file__).with_name("bare_app.py"), log_dir, "/")
    mongo: AsyncMongoClient[Doc] = AsyncMongoClient(
        isolation.mongodb_url, tz_aware=True, serverSelectionTimeoutMS=10_000, socketTimeoutMS=300_000
    )
    bench: Bench | None = None
    meta: dict[str, Any] = {}
    sizes: list[SizeResult] = []
    complete = False
    log(f"database {isolation.db}, Redis prefix {isolation.prefix}, logs in {log_dir}")
    try:
        await bare.launch()
        await server.launch()  # creates the collections and their indexes: seeding fills them as the app has them
        db = mongo[isolation.db]
        settings = Settings.from_env(server.env)
        hasher = PasswordHasher(
            time_cost=settings.password_time_cost,
            memory_cost=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
            type=Type.ID,
        )
        seeder = Seeder(db, random.Random(args.seed), hasher.hash(PASSWORD), args.batch, isolation)
        log(f"seeding {args.users:,} users, the admin and the probe's {PROBE_HISTORY} notifications")
        pending = await seeder.step(seeder.start(args.users))  # shown in the first size's column
        await seeder.validate()
        bench = Bench(args, server, seeder, bare)
        await bench.open_clients()
        info = await db.client.admin.command("buildInfo")
        meta = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "ferretdb": ferretdb_version(info, bench.ferretdb_pid),
            "backend": ferretdb_backend(bench.ferretdb_pid),
            "ferretdb_pid": bench.ferretdb_pid,
            "server": server_settings(server.env),
            "mongodb_timeout": settings.mongodb_timeout,
            "users": args.users,
            "users_seconds": pending.seconds,
            "reps": args.reps,
            "op_seconds": args.op_seconds,
            "timeout": args.timeout,
            "batch": args.batch,
            "read_share": args.read_share,
            "broadcast_share": args.broadcast_share,
            "seed": args.seed,
            "database": isolation.db,
        }
        seeded = 0
        for size in args.sizes:
            load_before_seeding = load_average()
            log(f"size {size:,}: seeding {size - seeded:,} notifications")
            shares = {"read_share": args.read_share, "broadcast_share": args.broadcast_share}
            step = pending + await seeder.step(seeder.grow(size - seeded, args.reps, **shares))
            pending, seeded = Step(), size
            await seeder.validate()
            result = SizeResult(size, step, counts(seeder), load_before_seeding)
            result.database_bytes = await database_bytes(db)
            log(f"size {size:,}: seeded in {step.seconds:.1f} s; {result.counts}; measuring")
            sizes.append(result)
            await bench.measure_size(result)
        complete = True
    finally:
        # What was measured is worth printing even when a later size failed or the run was interrupted. Then the
        # clean-up that matters, without awaiting (a second Ctrl-C cannot cut it short), then closing clients.
        if bench is not None and sizes:
            meta.update({"restarts": bench.restarts, "complete": complete})
            print(report(meta, sizes, bench) + ("" if complete else "\n\n(incomplete: the run ended early)"))
            if args.json:
                write_json(args.json, results_json(meta, sizes))
        server.stop()
        bare.stop()
        if args.keep:
            log(f"kept database {isolation.db} and Redis prefix {isolation.prefix} (--keep)")
        else:
            isolation.drop()
            log("stopped the server, dropped the database and deleted the Redis keys")
        if bench is not None:
            await bench.close_clients()
        await mongo.close()
    failed = any(op.failures or op.timeouts for size in sizes for op in size.ops.values())
    return 1 if failed else 0


def sizes_arg(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not sizes or any(size < 0 for size in sizes) or sizes != sorted(sizes):
        raise argparse.ArgumentTypeError("sizes must be ascending numbers >= 0, e.g. 0,100000,1000000")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, help="users besides the admin (default 10,000; 1,000 with --quick)")
    parser.add_argument(
        "--sizes", type=sizes_arg, help="notifications to measure at (default 0,100000,1000000; 0,20000 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="1,000 users and sizes 0,20000")
    parser.add_argument("--reps", type=int, default=30, help="repetitions per operation and size")
    parser.add_argument("--op-seconds", type=float, default=20.0, help="stop repeating an operation after this long")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one repetition may take")
    parser.add_argument(
        "--mongodb-timeout",
        type=float,
        help="the server's MONGODB_TIMEOUT in seconds (default: the server's, 5): past it, an operation answers 503",
    )
    parser.add_argument("--batch", type=int, default=1000, help="documents per insert_many")
    parser.add_argument("--read-share", type=float, default=0.7, help="of the targeted notifications that are read")
    parser.add_argument(
        "--broadcast-share", type=float, default=0.15, help="of each user's notifications that are broadcasts"
    )
    parser.add_argument("--seed", type=int, default=1, help="of the random choices")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the database and the Redis keys")
    parser.add_argument(
        "--access-log", action="store_true", help="the server's JSON access log on, as a user's default is"
    )
    args = parser.parse_args()
    args.users = args.users or (1000 if args.quick else 10_000)
    args.sizes = args.sizes or ([0, 20_000] if args.quick else [0, 100_000, 1_000_000])
    if args.users < 2 or args.reps < 1 or args.batch < 1 or not 0 <= args.broadcast_share < 1:
        parser.error("--users must be at least 2, --reps and --batch at least 1, --broadcast-share in [0, 1)")
    sys.exit(uvloop.run(run(args)))


if __name__ == "__main__":
    main()
