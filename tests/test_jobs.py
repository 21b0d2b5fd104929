"""The job queue against real Redis and a real SMTP server: retries, dead letters, restarts, periodic jobs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import AppFactory, ClientFactory, drop_test_data, make_settings
from tests.launcher import HOST, TIDINGS, Isolation, ServerProcess, server_env, wait_ready
from tests.mail import Inbox, eventually, mail_settings, smtp
from tidings.server.adapters.jobs import JobInfo, JobState
from tidings.server.app import create_app
from tidings.server.keys import jobs_key

__all__ = ["smtp"]

TIMEOUT = 30.0


def jobs_in(app: Any, state: JobState) -> Callable[[], Awaitable[list[JobInfo] | None]]:
    async def probe() -> list[JobInfo] | None:
        return await app[jobs_key].list(state) or None

    return probe


async def test_a_mail_refused_once_is_retried(smtp: Inbox, make_client: AppFactory) -> None:
    _, accounts, _ = await make_client(**mail_settings(smtp))
    smtp.refuse = 1
    user = await accounts.register()
    mail = await smtp.next_to(user["email"])
    assert smtp.refused == 1
    assert mail["Subject"] == "Confirm your email address for tidings"
    assert len(smtp.to(user["email"])) == 1


async def test_a_mail_refused_every_time_is_dead_lettered_then_retried_by_hand(
    smtp: Inbox, make_client: AppFactory
) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp, job_attempts=3))
    app = client.app
    smtp.refuse = 1000
    user = await accounts.register()
    [dead] = await eventually(jobs_in(app, "dead"))
    assert (dead.name, dead.attempts, dead.max_attempts) == ("send_mail", 3, 3)
    assert dead.error is not None and "451" in dead.error
    assert smtp.refused == 3 and not smtp.messages
    assert await app[jobs_key].counts() == {"queued": 0, "running": 0, "retrying": 0, "dead": 1}

    smtp.refuse = 0
    assert await app[jobs_key].retry(dead.key)
    await smtp.next_to(user["email"])
    assert not await app[jobs_key].list("dead")
    assert not await app[jobs_key].retry(dead.key)  # not dead any more


async def test_a_dead_job_can_be_discarded(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp, job_attempts=1))
    smtp.refuse = 1000
    await accounts.register()
    [dead] = await eventually(jobs_in(client.app, "dead"))
    assert await client.app[jobs_key].discard(dead.key)
    assert await client.app[jobs_key].list("dead") == []
    assert not await client.app[jobs_key].discard(dead.key)


async def test_a_job_survives_a_worker_restart(smtp: Inbox, aiohttp_client: ClientFactory) -> None:
    """Queued by a process with no worker, which then stops; a process started later delivers it."""
    settings = make_settings(**mail_settings(smtp, run_worker=False))
    try:
        first = await aiohttp_client(create_app(settings))
        response = await first.post(
            "/api/v1/auth/register",
            json={"email": "restart@example.com", "username": "restart", "password": "correct horse battery"},
        )
        assert response.status == 201
        [queued] = await first.app[jobs_key].list("queued")
        assert queued.name == "send_mail"
        await first.close()
        assert not smtp.messages

        second = await aiohttp_client(create_app(dataclasses.replace(settings, run_worker=True)))
        mail = await smtp.next_to("restart@example.com")
        assert mail["Subject"] == "Confirm your email address for tidings"
        await eventually(lambda: _none_left(second.app))
        await second.close()
    finally:
        await drop_test_data(settings)


async def _none_left(app: Any) -> bool:
    return not any((await app[jobs_key].counts()).values())


def _periods(log: Path, job: str) -> list[int]:
    periods = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("message") == "periodic job ran" and entry.get("job") == job:
            periods.append(int(entry["period"]))
    return periods


async def test_a_periodic_job_runs_once_per_period_with_two_processes(tmp_path: Path) -> None:
    isolation = Isolation.new("test", "periodic")
    env = server_env(
        isolation, jwt_secret="periodic-test-secret-" + "p" * 40, log_level="INFO", SESSION_SWEEP_INTERVAL="1"
    )
    servers = [ServerProcess("A", env, tmp_path), ServerProcess("B", env, tmp_path)]
    try:
        for server in servers:
            server.start()
        await asyncio.to_thread(wait_ready, *servers)

        async def enough() -> bool:
            ran = [p for server in servers for p in _periods(server.log, "sweep_sessions")]
            return len(set(ran)) >= 5

        await eventually(enough, within=60.0)
        ran = Counter(p for server in servers for p in _periods(server.log, "sweep_sessions"))
        assert all(count == 1 for count in ran.values()), ran
        # Both processes are workers; the periods went to whichever claimed them first.
        assert len(ran) >= 5
    finally:
        for server in servers:
            server.stop()
        await isolation.adrop()


async def test_tidings_worker_delivers_what_a_web_only_process_queued(smtp: Inbox, tmp_path: Path) -> None:
    """`tidings serve` with RUN_WORKER=0 only queues; `tidings worker` delivers, and stops cleanly on SIGTERM."""
    isolation = Isolation.new("test", "worker")
    env = server_env(
        isolation,
        jwt_secret="worker-test-secret-" + "w" * 40,
        SMTP_HOST=HOST,
        SMTP_PORT=str(smtp.port),
        SMTP_SECURITY="none",
        RUN_WORKER="0",
    )
    web_only = ServerProcess("web", env, tmp_path)
    worker = ServerProcess("worker", env, tmp_path, argv=[str(TIDINGS), "worker"])
    try:
        await web_only.launch()
        async with aiohttp.ClientSession() as session:
            body = {"email": "queued@example.com", "username": "queued", "password": "correct horse battery"}
            async with session.post(f"{web_only.url}/api/v1/auth/register", json=body) as response:
                assert response.status == 201
        worker.start()
        mail = await smtp.next_to("queued@example.com")
        assert mail["Subject"] == "Confirm your email address for tidings"
        worker.stop()
        assert worker.process is not None and worker.process.returncode == 0, worker.tail()
    finally:
        worker.stop()
        web_only.stop()
        await isolation.adrop()
