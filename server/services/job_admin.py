"""The panel's view of the job queue: jobs by state, and the retry and discard actions, audited."""

from __future__ import annotations

from dataclasses import dataclass

from tidings.server.adapters.errors import NotFound
from tidings.server.adapters.jobs import JOB_STATES, JobInfo, Jobs, JobState
from tidings.server.services.audit import Actor, AuditLog


@dataclass(frozen=True)
class JobAdmin:
    jobs: Jobs
    audit: AuditLog

    async def overview(self, limit: int = 100) -> dict[JobState, list[JobInfo]]:
        return {state: await self.jobs.list(state, limit) for state in JOB_STATES}

    async def retry(self, actor: Actor, key: str) -> None:
        if not await self.jobs.retry(key):
            raise NotFound("No such dead-lettered job.")
        await self.audit.record(actor, "job.retried", target_label=key, details={"job": key})

    async def discard(self, actor: Actor, key: str) -> None:
        if not await self.jobs.discard(key):
            raise NotFound("No such job, or it is running.")
        await self.audit.record(actor, "job.discarded", target_label=key, details={"job": key})
