"""Data that scales: a user's hot queries are served by an index, however much of everyone else's data there is.

The database holds 20,000 notifications of other users and a few hundred broadcasts. Every command the server
sends while one user lists, counts, connects, resumes and reads (and an admin sends and searches) is recorded,
then explained: each must push its filter down to the backend and be planned on an index (FerretDB on
PostgreSQL: an index scan in PostgreSQL's plan; MongoDB: no COLLSCAN), unless its collection is small enough
that reading all of it is cheap. This checks the property, not a timing; bench/scale.py has the timings.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from tests.conftest import Account, AppFactory
from tidings.documents.ids import new_id

API = "/api/v1"
OTHER_USERS = 200
PER_OTHER_USER = 100  # 20,000 notifications of other users
BROADCASTS = 120
# A collection this small may be read whole: PostgreSQL rightly prefers a sequential scan on a tiny table.
SMALL_COLLECTION = 300
# Filters FerretDB serves by _id (its own index and the launcher's) need no explaining.
READ_COMMANDS = {"find", "count", "update", "delete", "findAndModify", "aggregate", "distinct"}


class CommandRecorder(monitoring.CommandListener):
    """Records the commands sent to one database while `recording` is set."""

    def __init__(self) -> None:
        self.database = ""
        self.recording = False
        self.commands: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.recording and event.database_name == self.database and event.command_name in READ_COMMANDS:
            self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


RECORDER = CommandRecorder()
monitoring.register(RECORDER)  # pymongo has no unregister: the recorder is inert unless a test records


def filters_of(name: str, command: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(collection, filter) for each query in a command."""
    collection = command[name]
    if name == "find":
        yield collection, command.get("filter", {})
    elif name == "count" or name == "distinct":
        yield collection, command.get("query", {})
    elif name == "update":
        for update in command.get("updates", []):
            yield collection, update.get("q", {})
    elif name == "delete":
        for delete in command.get("deletes", []):
            yield collection, delete.get("q", {})
    elif name == "findAndModify":
        yield collection, command.get("query", {})
    elif name == "aggregate":
        stages = command.get("pipeline", [])
        yield collection, stages[0].get("$match", {}) if stages else {}


def by_id_only(query: dict[str, Any]) -> bool:
    return list(query) == ["_id"] and not isinstance(query["_id"], dict)


def plan_nodes(plan: Any) -> Iterator[dict[str, Any]]:
    if isinstance(plan, dict):
        yield plan
        for value in plan.values():
            yield from plan_nodes(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from plan_nodes(item)


def uses_index(explained: dict[str, Any]) -> bool:
    nodes = list(plan_nodes(explained.get("queryPlanner", {})))
    if "filterPushdown" in explained:  # FerretDB on PostgreSQL
        return bool(explained["filterPushdown"]) and any("Index" in str(n.get("Node Type", "")) for n in nodes)
    stages = {n.get("stage") for n in nodes}
    return "COLLSCAN" not in stages and bool(
        stages & {"IXSCAN", "IDHACK", "EXPRESS_IXSCAN", "EXPRESS_CLUSTERED_IXSCAN"}
    )


async def backend(client: AsyncMongoClient[Any]) -> str:
    info = await client.admin.command("buildInfo")
    if "ferretdbVersion" not in info and "ferretdb" not in json.dumps(info).lower():
        return "mongodb"
    probe = client["tidings_probe_backend"]
    try:
        await probe.c.insert_one({"x": 1})
        explained = await probe.command({"explain": {"find": "c", "filter": {"x": 1}}})
    finally:
        await client.drop_database("tidings_probe_backend")
    return "postgresql" if "Plan" in explained.get("queryPlanner", {}) else "sqlite"


async def seed_other_users(db: Any) -> list[ObjectId]:
    users: list[ObjectId] = [new_id() for _ in range(OTHER_USERS)]
    notifications = []
    for index in range(PER_OTHER_USER):
        dispatch = new_id()
        for number, user in enumerate(users):
            unread = (index + number) % 3 == 0
            notifications.append(
                {
                    "_id": new_id(),
                    "recipient_id": user,
                    "unread_by": user if unread else None,
                    "title": f"seeded {index}",
                    "body": "for someone else",
                    "data": None,
                    "sender_id": None,
                    "dispatch_id": dispatch,
                    "read_at": None if unread else ObjectId().generation_time,
                    "broadcast_seq": None,
                    "broadcast_page": None,
                    "created_at": ObjectId().generation_time,
                }
            )
    for start in range(0, len(notifications), 2000):
        await db.notifications.insert_many(notifications[start : start + 2000])
    return users


async def record(client: TestClient[Any, Any], probe: Account, admin: Account) -> list[tuple[str, dict[str, Any]]]:
    """What the probe and the admin do, with the commands it takes recorded."""
    RECORDER.commands.clear()
    RECORDER.recording = True
    try:
        first = await (await client.get(f"{API}/notifications?limit=20", headers=probe.headers)).json()
        assert len(first["items"]) == 20
        deep = await client.get(
            f"{API}/notifications?limit=20&before={first['items'][-1]['id']}", headers=probe.headers
        )
        assert deep.status == 200
        assert (await client.get(f"{API}/notifications?unread=true", headers=probe.headers)).status == 200
        assert (await client.get(f"{API}/notifications/unread-count", headers=probe.headers)).status == 200
        async with client.ws_connect(f"{API}/ws", headers=probe.headers) as ws:
            ready = await ws.receive_json(timeout=10)
            assert ready["type"] == "ready"
            await ws.send_json({"type": "resume", "after": first["items"][10]["id"]})
            for _ in range(10):
                frame = await ws.receive_json(timeout=10)
                assert frame["type"] == "notification"
        direct = next(item for item in first["items"] if not item["broadcast"])
        broadcast = next(item for item in first["items"] if item["broadcast"])
        for item in (direct, broadcast):
            read = await client.post(f"{API}/notifications/{item['id']}/read", headers=probe.headers)
            assert read.status == 204, await read.text()
        assert (await client.post(f"{API}/notifications/read-all", headers=probe.headers)).status == 204
        sent = await client.post(
            f"{API}/notifications", json={"title": "t", "body": "b", "user_ids": [admin.id]}, headers=admin.headers
        )
        assert sent.status == 201, await sent.text()
        everyone = await client.post(
            f"{API}/notifications", json={"title": "t", "body": "b", "broadcast": True}, headers=admin.headers
        )
        assert everyone.status == 201, await everyone.text()
        search = await client.get(f"{API}/users?q={probe.email[:6]}", headers=admin.headers)
        assert search.status == 200
        await asyncio.sleep(0)
    finally:
        RECORDER.recording = False
    return list(RECORDER.commands)


async def test_hot_queries_are_served_by_an_index(make_client: AppFactory) -> None:
    client, accounts, settings = await make_client()
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(settings.mongodb_url)
    try:
        kind = await backend(mongo)
        if kind == "sqlite":
            pytest.skip("FerretDB on SQLite pushes down only {_id: value}; the embedded default is PostgreSQL")
        db = mongo[settings.mongodb_db]
        admin = await accounts.user(admin=True)
        probe = await accounts.user()
        await seed_other_users(db)
        for number in range(BROADCASTS):
            if number % 4 == 0:
                response = await client.post(
                    f"{API}/notifications",
                    json={"title": f"direct {number}", "body": "b", "user_ids": [probe.id]},
                    headers=admin.headers,
                )
                assert response.status == 201
            response = await client.post(
                f"{API}/notifications",
                json={"title": f"broadcast {number}", "body": "b", "broadcast": True},
                headers=admin.headers,
            )
            assert response.status == 201
        RECORDER.database = settings.mongodb_db
        commands = await record(client, probe, admin)
        sizes = {name: await db[name].estimated_document_count() for name in await db.list_collection_names()}
        assert sizes["notifications"] >= OTHER_USERS * PER_OTHER_USER
        assert commands, "nothing was recorded"
        # The check itself can fail: the inbox query of old, an $or, reads the whole collection.
        old_inbox = {"$or": [{"recipient_id": ObjectId(probe.id)}, {"recipient_id": None}]}
        assert not uses_index(await db.command({"explain": {"find": "notifications", "filter": old_inbox}}))
        scans, explained_count = [], 0
        for name, command in commands:
            for collection, query in filters_of(name, command):
                if by_id_only(query) or sizes.get(collection, 0) <= SMALL_COLLECTION:
                    continue
                explained_count += 1
                explained = await db.command({"explain": {"find": collection, "filter": query}})
                if not uses_index(explained):
                    scans.append((name, collection, query))
        assert not scans, "queries not served by an index:\n" + "\n".join(map(repr, scans))
        assert explained_count >= 10, commands
    finally:
        RECORDER.database = ""
        await mongo.close()
