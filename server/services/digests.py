"""Unread digests: one mail listing what a user left unread for DIGEST_AFTER seconds, at most one per DIGEST_INTERVAL.

No query reads across all notifications (FerretDB pushes down only top-level equality). A send records its
recipients as candidates, due DIGEST_AFTER seconds later, in a due set (Redis sorted set); a broadcast is recorded
once. The periodic job (every DIGEST_CHECK_INTERVAL, once across processes) takes the due candidates and reads each
one's unread notifications the way the inbox does (by equality on `unread_by`, and the broadcast index), so read
notifications, read-alls and broadcast receipts all count. A due broadcast makes every verified, opted-in user a
candidate: one pass over the users with `email_verified` per check, however many broadcasts were due (docs/email.md).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from tidings.documents import Notification, User
from tidings.documents.ids import parse_object_id
from tidings.server.adapters.due_set import DueSet
from tidings.server.adapters.errors import BadRequest
from tidings.server.adapters.jobs import Jobs
from tidings.server.adapters.tasks import gather_bounded
from tidings.server.services.accounts import AccountService
from tidings.server.services.notifications import NotificationService
from tidings.server.services.outbox import Outbox
from tidings.server.settings import Settings

log = logging.getLogger(__name__)

SEND_DIGESTS = "send_digests"
BATCH = 500
UNREAD_READ = 100  # unread notifications read per user
LISTED = 20  # listed in one mail; the rest are counted
# A digest's unsubscribe link works this long (mail clients use it when the mail is read, not months later).
UNSUBSCRIBE_TOKEN_TTL = 60 * 86400


class InvalidUnsubscribe(BadRequest):
    code = "invalid_token"
    message = "This unsubscribe link is not valid."


def _created(item: dict[str, Any]) -> float:
    return datetime.fromisoformat(item["created_at"]).timestamp()


@dataclass(frozen=True)
class Digests:
    settings: Settings
    notifications: NotificationService
    accounts: AccountService
    outbox: Outbox
    candidates: DueSet
    broadcasts: DueSet

    def register(self, jobs: Jobs) -> None:
        self.notifications.sent_hooks.append(self.record)
        jobs.every(SEND_DIGESTS, self.settings.digest_check_interval, self.run)

    async def record(self, notifications: list[Notification]) -> None:
        """On send: each recipient is a candidate DIGEST_AFTER from now; a broadcast once, for everyone."""
        due = time.time() + self.settings.digest_after
        direct = {str(n.recipient_id): due for n in notifications if n.recipient_id is not None}
        await self.candidates.add(direct)
        await self.broadcasts.add({str(n.id): due for n in notifications if n.recipient_id is None})

    async def run(self) -> None:
        """The periodic job."""
        now = time.time()
        if await self.broadcasts.take_due(now, BATCH):
            users = await User.find({"email_verified": True}).to_list()
            await self.candidates.add({str(u.id): now for u in users if u.email_digest and u.is_active})
        sent = 0
        while True:
            taken = await self.candidates.take_due(now, BATCH)
            if not taken:
                break
            sent += sum(await gather_bounded(self._digest(user_id, now) for user_id in taken))
        if sent:
            log.info("unread digests sent", extra={"count": sent})

    async def _digest(self, user_id: str, now: float) -> bool:
        oid = parse_object_id(user_id)
        user = await User.get(oid) if oid is not None else None
        if user is None or not (user.is_active and user.email_verified and user.email_digest):
            return False
        assert user.id is not None
        last = user.digest_sent_at.timestamp() if user.digest_sent_at else None
        if last is not None and now - last < self.settings.digest_interval:
            await self.candidates.add({user_id: last + self.settings.digest_interval})
            return False
        page = await self.notifications.inbox(user.id, unread=True, limit=UNREAD_READ)
        cutoff = now - self.settings.digest_after
        # What an earlier digest listed (unread then, and older than its own cutoff) is not listed again.
        since = last - self.settings.digest_after if last is not None else float("-inf")
        due = [item for item in page.items if since < _created(item) <= cutoff]
        later = [_created(item) for item in page.items if _created(item) > cutoff]
        if later:
            await self.candidates.add({user_id: min(later) + self.settings.digest_after})
        if not due:
            return False
        await user.set({User.digest_sent_at: datetime.fromtimestamp(now, UTC)})
        unsubscribe = (
            f"{self.settings.public_url}/email/unsubscribe?{urlencode({'token': self.unsubscribe_token(user_id)})}"
        )
        items = [
            {"title": item["title"], "time": datetime.fromisoformat(item["created_at"]).strftime("%Y-%m-%d %H:%M UTC")}
            for item in due[:LISTED]
        ]
        count = len(due)
        await self.outbox.send(
            "digest",
            to=user.email,
            subject=f"{count} unread notification{'s' if count != 1 else ''} on tidings",
            context={
                "user": user.full_name or user.username,
                "items": items,
                "more": max(0, count - LISTED),
                "link": f"{self.settings.public_url}/",
                "unsubscribe": unsubscribe,
            },
            headers={"List-Unsubscribe": f"<{unsubscribe}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        )
        return True

    def _signature(self, user_id: str, expires: str) -> str:
        key = self.settings.jwt_secret.encode()
        return hmac.new(key, f"digest-unsubscribe:{user_id}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def unsubscribe_token(self, user_id: str, now: float | None = None) -> str:
        """Signed, good for one thing only (turning this user's digests off), and for UNSUBSCRIBE_TOKEN_TTL: mails
        carry no long-lived token."""
        expires = str(int((time.time() if now is None else now) + UNSUBSCRIBE_TOKEN_TTL))
        return f"{user_id}.{expires}.{self._signature(user_id, expires)}"

    async def unsubscribe(self, token: str) -> None:
        """The one-click unsubscribe (RFC 8058): no login, the signed token is the proof."""
        user_id, _, rest = token.partition(".")
        expires, _, signature = rest.partition(".")
        if (
            not signature
            or not hmac.compare_digest(signature, self._signature(user_id, expires))
            or not expires.isdigit()
            or int(expires) < time.time()
        ):
            raise InvalidUnsubscribe()
        oid = parse_object_id(user_id)
        user = await User.get(oid) if oid is not None else None
        if user is None:
            raise InvalidUnsubscribe()
        if user.email_digest:
            await self.accounts.update_self(user, {"email_digest": False}, None)
