"""Notifications over REST: sending (admin), the inbox, unread counts and per-user read state of broadcasts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from beanie import PydanticObjectId

from tests.conftest import Account, Accounts
from tests.helpers import error_of
from tests.realtime import API, ids, send, send_to, unread
from tidings.documents import Inbox, Notification
from tidings.server.adapters.errors import ValidationFailed
from tidings.server.keys import audit_key, notifications_key
from tidings.server.services import recipients

UNKNOWN_ID = "0" * 24  # a well-formed ObjectId no document has


async def send_one(client: TestClient[Any, Any], admin: Account, user: Account, **fields: Any) -> str:
    return str((await send_to(client, admin, user, **fields))["id"])


async def inbox(client: TestClient[Any, Any], user: Account, query: str = "") -> dict[str, Any]:
    response = await client.get(f"{API}/notifications{query}", headers=user.headers)
    assert response.status == 200, await response.text()
    page: dict[str, Any] = await response.json()
    return page


async def mark_read(client: TestClient[Any, Any], user: Account, notification_id: str) -> ClientResponse:
    return await client.post(f"{API}/notifications/{notification_id}/read", headers=user.headers)


def read_flags(page: dict[str, Any]) -> dict[str, bool]:
    return {item["id"]: item["read"] for item in page["items"]}


# Sending


async def test_send_requires_an_admin(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.user()
    body = {"title": "t", "body": "b", "user_ids": [user.id]}
    await error_of(await client.post(f"{API}/notifications", json=body), 401, "not_authenticated")
    await error_of(await client.post(f"{API}/notifications", json=body, headers=user.headers), 403, "forbidden")
    assert (await inbox(client, user))["items"] == []


async def test_sent_notification_is_stored_and_returned(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    user = await accounts.user()
    body = {"title": "Build passed", "body": "main is green", "data": {"build": 42, "tags": ["ci"]}}
    response = await client.post(f"{API}/notifications", json={**body, "user_ids": [user.id]}, headers=admin.headers)
    assert response.status == 201, await response.text()
    sent = await response.json()
    assert sent["broadcast"] is False
    [notification] = sent["notifications"]
    assert set(notification) == {"id", "title", "body", "data", "created_at", "broadcast", "read", "sender"}
    assert notification["sender"] == {"type": "user", "id": admin.id, "name": admin.username}
    assert {k: notification[k] for k in body} == body
    assert notification["broadcast"] is False and notification["read"] is False
    assert (await inbox(client, user))["items"] == [notification]
    assert await unread(client, user) == 1
    # The sender is not a recipient.
    assert (await inbox(client, admin))["items"] == []


async def test_schema_violations_are_422_and_store_nothing(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    user = await accounts.user()
    ok = {"title": "t", "body": "b", "user_ids": [user.id]}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"body": "b", "user_ids": [user.id]}, "title"),
        ({"title": "t", "user_ids": [user.id]}, "body"),
        ({"title": "t", "body": "b"}, "_schema"),  # neither audience
        ({**ok, "broadcast": True}, "_schema"),  # both
        ({**ok, "user_ids": [], "broadcast": False}, "user_ids"),
        ({"title": "t", "body": "b", "broadcast": False}, "_schema"),
        ({**ok, "title": ""}, "title"),
        ({**ok, "title": "x" * 201}, "title"),
        ({**ok, "body": "x" * 5001}, "body"),
        ({**ok, "user_ids": [user.id] * 1001}, "user_ids"),
        ({**ok, "user_ids": user.id}, "user_ids"),
        ({**ok, "data": "text"}, "data"),
        ({**ok, "data": [1, 2]}, "data"),
        ({**ok, "data": {"k" * 101: 1}}, "data"),
        ({**ok, "unknown": 1}, "unknown"),
        ({"title": "t", "body": "b", "broadcast": "true"}, "broadcast"),
        ({"title": "t", "body": "b", "broadcast": 1}, "broadcast"),
        # Operator objects where values are expected are refused by the schema, never passed to MongoDB.
        ({**ok, "title": {"$gt": ""}}, "title"),
        ({**ok, "user_ids": [{"$ne": None}]}, "user_ids"),
        ({**ok, "user_ids": {"$exists": True}}, "user_ids"),
        ({"title": "t", "body": "b", "broadcast": {"$ne": False}}, "broadcast"),
    ]
    for body, field in cases:
        response = await client.post(f"{API}/notifications", json=body, headers=admin.headers)
        error = await error_of(response, 422, "validation_error")
        assert field in error.get("details", {}), (body, error)
    assert await unread(client, user) == 0


async def test_data_mongodb_cannot_store_is_422_not_500(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    user = await accounts.user()
    deep: Any = "leaf"
    for _ in range(40):
        deep = {"a": deep}
    cases: list[Any] = [
        {"$where": "sleep(1000)"},
        {"nested": {"$gt": 1}},
        {"list": [{"$set": {"is_admin": True}}]},
        {"a.b": 1},
        {"nul\u0000key": 1},
        {"big": 2**64},
        {"small": -(2**63) - 1},
        deep,
        {"x": json.loads("[" * 600 + "]" * 600)},  # deeper than BSON allows, still under 4096 bytes
    ]
    for data in cases:
        response = await client.post(
            f"{API}/notifications",
            json={"title": "t", "body": "b", "user_ids": [user.id], "data": data},
            headers=admin.headers,
        )
        error = await error_of(response, 422, "validation_error")
        assert "data" in error["details"], error
    assert await unread(client, user) == 0
    # What MongoDB can store goes through untouched, and the inbox still reads.
    fine = {"dollar$inside": 1, "empty": {}, "max": 2**63 - 1, "min": -(2**63), "unicode": "h\u00e9", "none": None}
    await send_one(client, admin, user, data=fine)
    assert (await inbox(client, user))["items"][0]["data"] == fine


async def test_a_body_nested_deeper_than_the_parser_goes_is_400(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    depth = 10_000  # 20 KB: under the body limit, far beyond Python's recursion limit
    nested = "[" * depth + "]" * depth
    body = json.dumps({"title": "t", "body": "b", "user_ids": [user.id], "data": {"x": "NESTED"}})
    body = body.replace('"NESTED"', nested)
    headers = {**admin.headers, "Content-Type": "application/json"}
    response = await client.post(f"{API}/notifications", data=body, headers=headers)
    await error_of(response, 400, "bad_request")
    assert await unread(client, user) == 0


async def test_title_body_and_data_limits(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    user = await accounts.user()
    padding = 4096 - len(json.dumps({"k": ""}))
    largest = {"k": "x" * padding}
    assert len(json.dumps(largest)) == 4096
    await send_one(client, admin, user, title="t" * 200, body="b" * 5000, data=largest)
    await send_one(client, admin, user, body="")  # an empty body is allowed; an empty title is not
    response = await client.post(
        f"{API}/notifications",
        json={"title": "t", "body": "b", "user_ids": [user.id], "data": {"k": "x" * (padding + 1)}},
        headers=admin.headers,
    )
    error = await error_of(response, 422, "validation_error")
    assert "4096" in json.dumps(error["details"]["data"]), error
    assert await unread(client, user) == 2


async def test_unknown_or_malformed_recipients_are_named(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    user = await accounts.user()
    body = {"title": "t", "body": "b", "user_ids": [user.id, UNKNOWN_ID]}
    error = await error_of(
        await client.post(f"{API}/notifications", json=body, headers=admin.headers), 422, "validation_error"
    )
    assert error["details"] == {"user_ids": {"unknown": [UNKNOWN_ID]}}, error
    body["user_ids"] = [user.id, "not-an-id"]
    error = await error_of(
        await client.post(f"{API}/notifications", json=body, headers=admin.headers), 422, "validation_error"
    )
    assert error["details"] == {"user_ids": {"1": ["Not a valid id."]}}, error
    # All or nothing: the known recipient got nothing either time.
    assert await unread(client, user) == 0


async def test_recipients_by_email_and_username(client: TestClient[Any, Any], accounts: Accounts) -> None:
    """Emails and usernames name recipients as ids do, matched as uniqueness is (case-insensitively); a user
    named twice, by id and by email, gets one notification."""
    admin = await accounts.user(admin=True)
    alice, bob, carol = await accounts.user(), await accounts.user(), await accounts.user()
    sent = await send(
        client, admin, user_ids=[alice.id], emails=[alice.email.upper(), bob.email], usernames=[carol.username.upper()]
    )
    assert len(sent) == 3
    assert [await unread(client, user) for user in (alice, bob, carol)] == [1, 1, 1]
    assert await unread(client, admin) == 0


async def test_unknown_emails_and_usernames_are_named_by_field(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    body = {
        "title": "t",
        "body": "b",
        "emails": [user.email, "nobody@example.com"],
        "usernames": [user.username, "ghost"],
    }
    error = await error_of(
        await client.post(f"{API}/notifications", json=body, headers=admin.headers), 422, "validation_error"
    )
    assert error["details"] == {"emails": {"unknown": ["nobody@example.com"]}, "usernames": {"unknown": ["ghost"]}}
    for bad in (
        {"title": "t", "body": "b", "emails": []},
        {"title": "t", "body": "b", "emails": [user.email], "broadcast": True},
        {"title": "t", "body": "b", "usernames": "ghost"},
        {"title": "t", "body": "b", "emails": ["x" * 255]},
        {"title": "t", "body": "b", "user_ids": [user.id] * 600, "emails": [user.email] * 401},
    ):
        response = await client.post(f"{API}/notifications", json=bad, headers=admin.headers)
        await error_of(response, 422, "validation_error")
    assert await unread(client, user) == 0


@pytest.mark.parametrize("one_by_one", [1000, 1], ids=["equality-per-name", "in-beyond-the-limit"])
async def test_recipients_resolve_alike_by_lookups_or_in(
    client: TestClient[Any, Any], accounts: Accounts, monkeypatch: pytest.MonkeyPatch, one_by_one: int
) -> None:
    """Names are looked up one equality each (in chunks), or with one $in past LOOKUP_ONE_BY_ONE: same answer."""
    monkeypatch.setattr(recipients, "LOOKUP_ONE_BY_ONE", one_by_one)
    monkeypatch.setattr(recipients, "LOOKUP_CONCURRENCY", 2)
    users = [await accounts.user() for _ in range(3)]
    a, b, c = users
    found = await recipients.resolve_recipients(
        user_ids=[c.id, a.id, c.id],
        emails=[b.email.upper(), a.email, b.email],
        usernames=[c.username.upper(), b.username],
    )
    assert [str(oid) for oid in found] == [c.id, a.id, b.id]
    with pytest.raises(ValidationFailed) as refused:
        await recipients.resolve_recipients(
            user_ids=[a.id, UNKNOWN_ID, b.id, "f" * 24],
            emails=["nobody@example.com", c.email, "NOBODY@example.com"],
            usernames=["ghost", a.username],
        )
    assert refused.value.details == {
        "user_ids": {"unknown": [UNKNOWN_ID, "f" * 24]},
        "emails": {"unknown": ["nobody@example.com", "NOBODY@example.com"]},
        "usernames": {"unknown": ["ghost"]},
    }


async def test_each_recipient_gets_one_notification(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    alice, bob = await accounts.user(), await accounts.user()
    sent = await send(client, admin, user_ids=[alice.id, bob.id, alice.id])
    assert len(sent) == 2
    assert len(set(ids(sent))) == 2
    assert await unread(client, alice) == 1
    assert await unread(client, bob) == 1
    # Separate documents: reading one does not read the other.
    [for_alice] = (await inbox(client, alice))["items"]
    assert (await mark_read(client, alice, for_alice["id"])).status == 204
    assert await unread(client, alice) == 0
    assert await unread(client, bob) == 1


async def test_sender_is_recorded_as_the_admin_is_now(client: TestClient[Any, Any], accounts: Accounts) -> None:
    """The sender's email comes with the admin's authentication, so a change of email must show at once (an
    admin's change of an account applies at once; a user's own waits for the new address to confirm)."""
    admin = await accounts.user(admin=True)
    user = await accounts.user()
    await send_to(client, admin, user)
    new_email = f"renamed-{admin.email}"
    response = await client.patch(f"{API}/users/{admin.id}", json={"email": new_email}, headers=admin.headers)
    assert response.status == 200, await response.text()
    await send_to(client, admin, user)
    dispatches, _ = await client.app[notifications_key].dispatches()
    assert [stats.dispatch.sender_email for stats in dispatches] == [new_email, admin.email]
    entries = (await client.app[audit_key].page()).items
    sent_by = [entry.actor_email for entry in entries if entry.action == "notification.sent"]
    assert sent_by == [new_email, admin.email]


# The inbox


async def test_inbox_is_newest_first_with_keyset_pagination(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    user = await accounts.user()
    sent = [await send_one(client, admin, user, title=f"n{i}") for i in range(5)]
    newest_first = sent[::-1]
    assert ids((await inbox(client, user))["items"]) == newest_first
    assert (await inbox(client, user))["next_before"] is None

    seen: list[str] = []
    query = "?limit=2"
    while True:
        page = await inbox(client, user, query)
        assert len(page["items"]) <= 2
        seen += ids(page["items"])
        if page["next_before"] is None:
            break
        assert page["next_before"] == page["items"][-1]["id"]
        query = f"?limit=2&before={page['next_before']}"
    assert seen == newest_first
    # A notification sent meanwhile does not shift the pages after a cursor.
    await send_one(client, admin, user, title="late")
    assert ids((await inbox(client, user, f"?limit=2&before={sent[2]}"))["items"]) == [sent[1], sent[0]]

    for bad in ("?limit=0", "?limit=201", "?limit=x", "?before=nope", "?unread=maybe", "?other=1", "?before[$gt]=a"):
        response = await client.get(f"{API}/notifications{bad}", headers=user.headers)
        await error_of(response, 422, "validation_error")


async def test_unread_filter_and_count(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    user = await accounts.user()
    first, second, third = [await send_one(client, admin, user) for _ in range(3)]
    [broadcast] = await send(client, admin, broadcast=True)
    assert await unread(client, user) == 4
    assert (await mark_read(client, user, second)).status == 204
    assert (await mark_read(client, user, broadcast["id"])).status == 204
    assert await unread(client, user) == 2
    assert ids((await inbox(client, user, "?unread=true"))["items"]) == [third, first]
    assert read_flags(await inbox(client, user)) == {broadcast["id"]: True, third: False, second: True, first: False}
    page = await inbox(client, user, "?unread=true&limit=1")
    assert ids(page["items"]) == [third]
    assert ids((await inbox(client, user, f"?unread=true&before={page['next_before']}"))["items"]) == [first]


async def test_mark_read_only_own_notifications(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    alice, bob = await accounts.user(), await accounts.user()
    for_alice = await send_one(client, admin, alice)
    for_bob = await send_one(client, admin, bob)

    assert (await mark_read(client, alice, for_alice)).status == 204
    assert (await mark_read(client, alice, for_alice)).status == 204  # idempotent
    assert await unread(client, alice) == 0
    assert read_flags(await inbox(client, alice)) == {for_alice: True}

    await error_of(await mark_read(client, alice, for_bob), 404, "not_found")
    await error_of(await mark_read(client, admin, for_bob), 404, "not_found")  # admins have no inbox access either
    await error_of(await mark_read(client, alice, UNKNOWN_ID), 404, "not_found")
    await error_of(await mark_read(client, alice, "not-an-id"), 422, "validation_error")
    assert await unread(client, bob) == 1
    assert read_flags(await inbox(client, bob)) == {for_bob: False}


async def test_read_all_marks_direct_and_broadcasts(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    alice, bob = await accounts.user(), await accounts.user()
    await send_one(client, admin, alice)
    await send(client, admin, broadcast=True)
    await send(client, admin, broadcast=True)
    await send_one(client, admin, bob)
    assert await unread(client, alice) == 3

    response = await client.post(f"{API}/notifications/read-all", headers=alice.headers)
    assert response.status == 204, await response.text()
    assert await unread(client, alice) == 0
    assert set(read_flags(await inbox(client, alice)).values()) == {True}
    assert (await inbox(client, alice, "?unread=true"))["items"] == []
    # Bob's state is untouched, and a later broadcast is unread again for Alice.
    assert await unread(client, bob) == 3
    [later] = await send(client, admin, broadcast=True)
    assert await unread(client, alice) == 1
    assert ids((await inbox(client, alice, "?unread=true"))["items"]) == [later["id"]]
    assert (await client.post(f"{API}/notifications/read-all", headers=alice.headers)).status == 204
    assert await unread(client, alice) == 0


async def test_broadcast_read_state_is_per_user(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    alice, bob = await accounts.user(), await accounts.user()
    [broadcast] = await send(client, admin, broadcast=True)
    assert broadcast["broadcast"] is True
    assert await unread(client, alice) == 1
    assert await unread(client, bob) == 1

    assert (await mark_read(client, alice, broadcast["id"])).status == 204
    assert (await mark_read(client, alice, broadcast["id"])).status == 204
    assert await unread(client, alice) == 0
    assert await unread(client, bob) == 1
    assert read_flags(await inbox(client, alice)) == {broadcast["id"]: True}
    assert read_flags(await inbox(client, bob)) == {broadcast["id"]: False}
    assert ids((await inbox(client, bob, "?unread=true"))["items"]) == [broadcast["id"]]

    # Someone who joined after the broadcast never sees it, and cannot mark it.
    carol = await accounts.user()
    assert (await inbox(client, carol))["items"] == []
    assert await unread(client, carol) == 0
    await error_of(await mark_read(client, carol, broadcast["id"]), 404, "not_found")
    # ... but sees the next one.
    [later] = await send(client, admin, broadcast=True)
    assert ids((await inbox(client, carol))["items"]) == [later["id"]]
    assert await unread(client, carol) == 1
    assert await unread(client, bob) == 2


async def test_users_never_see_each_others_notifications(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    alice, bob = await accounts.user(), await accounts.user()
    for_bob = await send_one(client, admin, bob, title="for bob")
    for_alice = [await send_one(client, admin, alice, title="for alice") for _ in range(2)]
    assert ids((await inbox(client, alice))["items"]) == for_alice[::-1]
    assert ids((await inbox(client, bob))["items"]) == [for_bob]
    # A cursor from someone else's notification only positions the page; it reveals nothing.
    assert ids((await inbox(client, bob, f"?before={for_alice[1]}"))["items"]) == [for_bob]
    assert await unread(client, alice) == 2
    assert await unread(client, bob) == 1
    assert (await inbox(client, admin))["items"] == []


async def test_inbox_needs_authentication(client: TestClient[Any, Any]) -> None:
    for method, path in [
        ("GET", "/notifications"),
        ("GET", "/notifications/unread-count"),
        ("POST", f"/notifications/{UNKNOWN_ID}/read"),
        ("POST", "/notifications/read-all"),
    ]:
        response = await client.request(method, f"{API}{path}")
        await error_of(response, 401, "not_authenticated")
        response = await client.request(method, f"{API}{path}", headers={"Authorization": "Bearer not-a-token"})
        await error_of(response, 401, "invalid_token")


async def test_admin_change_notifies_the_user(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    user = await accounts.user()
    response = await client.patch(f"{API}/users/{user.id}", json={"full_name": "New Name"}, headers=admin.headers)
    assert response.status == 200, await response.text()
    [notification] = (await inbox(client, user))["items"]
    assert notification["data"] == {"event": "account_changed", "fields": ["full_name"]}
    assert notification["read"] is False
    assert notification["title"] == "Your name was changed"
    assert notification["body"] == "Your name was changed."
    assert await unread(client, user) == 1
    assert (await inbox(client, admin))["items"] == []
    # Flags read as what they mean, and several changes at once as one notice.
    response = await client.patch(f"{API}/users/{user.id}", json={"is_admin": True}, headers=admin.headers)
    assert response.status == 200, await response.text()
    assert (await inbox(client, user))["items"][0]["title"] == "You are now an administrator"
    response = await client.patch(f"{API}/users/{user.id}", json={"is_admin": False, "bio": "b"}, headers=admin.headers)
    assert response.status == 200, await response.text()
    newest = (await inbox(client, user))["items"][0]
    assert newest["title"] == "An administrator changed your account"
    assert newest["body"] == "Your bio was changed. You are no longer an administrator."
    assert await unread(client, user) == 3
    # A change a user makes to their own account is not announced to them.
    response = await client.patch(f"{API}/users/me", json={"bio": "hi"}, headers=user.headers)
    assert response.status == 200, await response.text()
    assert await unread(client, user) == 3


async def test_concurrent_first_read_alls_all_succeed(
    client: TestClient[Any, Any], accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten read-alls at once by a user with no inbox yet: one creates it, none fails (no duplicate key). Reading
    the inbox is slowed down, so that without a lock all ten would find none and race to create it."""
    admin, user = await accounts.user(admin=True), await accounts.user()
    original_get = Inbox.get

    async def slow_get(*args: Any, **kwargs: Any) -> Any:
        found = await original_get(*args, **kwargs)
        await asyncio.sleep(0.05)
        return found

    monkeypatch.setattr(Inbox, "get", slow_get)
    await send(client, admin, broadcast=True)
    await send_to(client, admin, user)
    responses = await asyncio.gather(
        *(client.post(f"{API}/notifications/read-all", headers=user.headers) for _ in range(10))
    )
    assert [response.status for response in responses] == [204] * 10
    assert await unread(client, user) == 0


async def test_a_title_of_only_spaces_is_refused_and_titles_are_stripped(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    for title in ("   ", "\t\n ", ""):
        response = await client.post(
            f"{API}/notifications", json={"title": title, "body": "b", "user_ids": [user.id]}, headers=admin.headers
        )
        error = await error_of(response, 422, "validation_error")
        assert "title" in error["details"], error
    [sent] = await send(client, admin, user_ids=[user.id], title="  Hello  ")
    assert sent["title"] == "Hello"
    assert await unread(client, user) == 1


async def test_account_notices_come_from_the_admin_and_broadcasts_are_audited_as_everyone(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    response = await client.patch(f"{API}/users/{user.id}", json={"is_admin": True}, headers=admin.headers)
    assert response.status == 200, await response.text()
    [notice] = await Notification.find({"recipient_id": PydanticObjectId(user.id)}).to_list()
    assert notice.sender_id == PydanticObjectId(admin.id)
    assert notice.dispatch_id is None
    await send(client, admin, broadcast=True, title="To all")
    entries = (await client.app[audit_key].page(limit=20)).items
    [sent] = [entry for entry in entries if entry.action == "notification.sent"]
    assert sent.details == {"audience": "everyone"}
    assert not [entry for entry in entries if entry.action == "notification.sent" and entry.target_label != "To all"]


async def test_read_all_is_one_write_and_its_clean_up_marks_each_once(
    client: TestClient[Any, Any], accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-all sets a watermark; the notifications it covers are read at once for every read, and are marked
    one by one in the background. A clean-up that never ran (a crash, a full queue) is asked again by the next
    read that meets one, and each is marked, and tallied, once."""
    admin, user = await accounts.user(admin=True), await accounts.user()
    service = client.app[notifications_key]
    sent = [await send_one(client, admin, user, title=f"n{i}") for i in range(4)]
    requested: list[PydanticObjectId] = []
    monkeypatch.setattr(service.read_cleanup, "request", requested.append)  # as if the process stopped
    assert (await client.post(f"{API}/notifications/read-all", headers=user.headers)).status == 204
    assert requested == [PydanticObjectId(user.id)]
    stored = await Notification.find({"recipient_id": PydanticObjectId(user.id)}).to_list()
    assert all(n.unread_by is not None for n in stored)  # not yet marked one by one
    assert await unread(client, user) == 0
    assert all(read_flags(await inbox(client, user)).values())
    assert (await inbox(client, user, "?unread=true"))["items"] == []
    assert (await mark_read(client, user, sent[0])).status == 204  # already read: nothing changes
    monkeypatch.undo()
    # A read that meets a covered notification asks for the clean-up again.
    assert await unread(client, user) == 0
    await service.read_cleanup.join()
    stored = await Notification.find({"recipient_id": PydanticObjectId(user.id)}).to_list()
    assert all(n.unread_by is None and n.read_at is not None for n in stored)
    marked = await Inbox.get(PydanticObjectId(user.id))
    assert marked is not None and not marked.clearing
    # Sent after the read-all: unread, and a second read-all covers it.
    late = await send_one(client, admin, user, title="late")
    assert await unread(client, user) == 1
    assert not read_flags(await inbox(client, user))[late]
    assert (await client.post(f"{API}/notifications/read-all", headers=user.headers)).status == 204
    await service.read_cleanup.join()
    assert await unread(client, user) == 0
    assert (await Notification.get(PydanticObjectId(late))).unread_by is None  # type: ignore[union-attr]
