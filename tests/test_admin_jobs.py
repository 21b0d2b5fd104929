"""The panel's Jobs page: dead-lettered mail shown, retried and discarded with CSRF, each action audited; and the
user page's password reset link."""

from __future__ import annotations

from typing import Any

from tests.conftest import AppFactory
from tests.mail import Inbox, eventually, mail_settings, smtp
from tests.test_admin_panel import open_panel
from tidings.documents import AuditEntry
from tidings.server.keys import jobs_key

__all__ = ["smtp"]


async def dead_jobs(app: Any, count: int) -> list[Any]:
    async def probe() -> list[Any] | None:
        found = await app[jobs_key].list("dead")
        return found if len(found) >= count else None

    return await eventually(probe)


async def test_dead_jobs_are_listed_retried_and_discarded(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp, job_attempts=1))
    panel = await open_panel(client, accounts)  # its admin's verification mail is delivered
    await smtp.next_to(panel.admin.email)
    smtp.refuse = 1000
    first, second = await accounts.register(), await accounts.register()
    dead = await dead_jobs(client.app, 2)
    page = await panel.page("/admin/jobs")
    assert "Dead-lettered (2)" in page and "451" in page
    for job in dead:
        assert job.key in page

    # Without the CSRF token: refused, nothing changes.
    refused = await panel.post("/admin/jobs/retry", {"key": dead[0].key}, csrf="forged")
    assert refused.status == 403
    assert len(await client.app[jobs_key].list("dead")) == 2

    smtp.refuse = 0
    _, kind, _ = await panel.act("/admin/jobs/retry", {"key": dead[0].key})
    assert kind == "success"
    _, kind, _ = await panel.act("/admin/jobs/discard", {"key": dead[1].key})
    assert kind == "success"
    delivered = await smtp.wait_for(lambda _: smtp.to(first["email"]) + smtp.to(second["email"]))
    assert len(delivered) == 1
    assert await client.app[jobs_key].list("dead") == []
    _, kind, _ = await panel.act("/admin/jobs/retry", {"key": dead[1].key})
    assert kind == "error"  # discarded: gone
    actions = {
        entry.action for entry in await AuditEntry.find({"action": {"$in": ["job.retried", "job.discarded"]}}).to_list()
    }
    assert actions == {"job.retried", "job.discarded"}


async def test_an_admin_sends_a_reset_link_from_the_users_page(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp))
    panel = await open_panel(client, accounts)
    user = await accounts.user()
    _, kind, _ = await panel.act(f"/admin/users/{user.id}/password-reset")
    assert kind == "success"
    mail = await smtp.next_to(user.email, after=1)
    assert mail["Subject"] == "Reset your tidings password"
    [entry] = await AuditEntry.find({"action": "user.password_reset_sent"}).to_list()
    assert entry.target_label == user.email
