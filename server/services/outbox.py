"""Outgoing mail: rendered now, delivered by a job (retried with backoff, dead-lettered after the last attempt)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidings.server.adapters.jobs import Jobs
from tidings.server.adapters.mailer import Mail, Mailer

SEND_MAIL = "send_mail"


@dataclass(frozen=True)
class Outbox:
    mailer: Mailer
    jobs: Jobs

    def register(self) -> None:
        """The delivery job; registered before the worker starts."""
        self.jobs.register(SEND_MAIL, self.deliver)

    async def send(
        self, template: str, *, to: str, subject: str, context: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        """Render templates/email/`template`.txt and .html and queue the message; a request never waits on SMTP."""
        mail = self.mailer.render(template, to=to, subject=subject, context=context, headers=headers)
        await self.jobs.enqueue(SEND_MAIL, **mail.as_job())

    async def deliver(self, **fields: Any) -> None:
        """The job: one delivery attempt; MailError makes the queue retry it."""
        await self.mailer.deliver(Mail(**fields))
