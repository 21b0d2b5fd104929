"""GET /metrics: who may read it, what it counts, and that the shipped alert rules and dashboard read only metrics the
app exports, checked with Debian's promtool against a live /metrics."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PASSWORD, Accounts, AppFactory
from tests.helpers import API, Samples, error_of, metric_samples
from tests.realtime import TIMEOUT, next_of, pong, ready, send, send_to
from tidings.server.keys import jobs_key, metrics_key

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "tidings.json"
WS = f"{API}/ws"
FIXED_NAMES = ("tidings_http_requests_total", "tidings_http_request_duration_seconds", "tidings_websocket_connections")


async def scrape(client: TestClient[Any, Any], **headers: str) -> str:
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return await response.text()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def eventually(client: TestClient[Any, Any], check: Callable[[Samples], bool]) -> Samples:
    """Scrape until `check` holds (a count that follows an event the test cannot await), for at most TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        samples = metric_samples(await scrape(client))
        if check(samples):
            return samples
        assert time.monotonic() < deadline, "the metrics never showed the expected value"
        await asyncio.sleep(0.05)


# Who may read it


async def test_loopback_reads_the_prometheus_text_format(client: TestClient[Any, Any]) -> None:
    text = await scrape(client)
    names = {family.name for family in text_string_to_metric_families(text)}
    # The parser names counters without _total; the exposition has it.
    assert "tidings_http_requests" in names and "tidings_http_requests_total" in text
    for name in FIXED_NAMES[1:]:
        assert name in names


@pytest.mark.parametrize(
    "forwarded",
    [{"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}, {"X-Real-IP": "203.0.113.9"}],
)
async def test_a_request_a_proxy_forwarded_is_not_local(
    client: TestClient[Any, Any], forwarded: dict[str, str]
) -> None:
    response = await client.get("/metrics", headers=forwarded)
    error = await error_of(response, 403, "forbidden")
    assert "metrics token" in error["message"]


async def test_the_metrics_token_opens_it_from_anywhere(make_client: AppFactory) -> None:
    token = uuid.uuid4().hex
    client, _, _ = await make_client(metrics_token=token)
    remote = {"X-Forwarded-For": "203.0.113.9"}
    assert "tidings_http_requests_total" in await scrape(client, Authorization=f"Bearer {token}", **remote)
    for wrong in (f"Bearer {token}x", f"Bearer {token[:-1]}", "Bearer ", f"Basic {token}", token):
        response = await client.get("/metrics", headers={"Authorization": wrong, **remote})
        await error_of(response, 403, "forbidden")


async def test_metrics_off_records_nothing_and_answers_404(make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(metrics=False)
    await accounts.user()
    response = await client.get("/metrics")
    await error_of(response, 404, "not_found")
    assert client.app is not None
    assert "tidings_http_requests_total{" not in client.app[metrics_key].exposition().decode()


async def test_it_is_not_in_the_openapi_document(client: TestClient[Any, Any]) -> None:
    document = await (await client.get("/api/docs/openapi.json")).json()
    assert "/metrics" not in document["paths"]


# What it counts


async def test_requests_are_counted_by_route_template_never_the_raw_path(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    me = await accounts.user(admin=True)
    secret_looking = uuid.uuid4().hex[:24]
    assert (await client.get(f"{API}/users/{secret_looking}", headers=me.headers)).status == 404
    assert (await client.get(f"/no/such/{secret_looking}")).status == 404
    assert (await client.get(f"{API}/users/me", headers=me.headers)).status == 200
    text = await scrape(client)
    assert secret_looking not in text
    samples = metric_samples(text)
    route = {"method": "GET", "route": f"{API}/users/{{user_id}}"}
    assert value(samples, "tidings_http_requests_total", status="404", **route) == 1
    assert value(samples, "tidings_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    me_route = {"method": "GET", "route": f"{API}/users/me"}
    assert value(samples, "tidings_http_requests_total", status="200", **me_route) == 1
    assert value(samples, "tidings_http_request_duration_seconds_count", **me_route) == 1
    assert value(samples, "tidings_http_request_duration_seconds_bucket", le="+Inf", **me_route) == 1
    assert 0 < value(samples, "tidings_http_request_duration_seconds_sum", **me_route) < TIMEOUT
    register = {"method": "POST", "route": f"{API}/auth/register", "status": "201"}
    assert value(samples, "tidings_http_requests_total", **register) == 1


async def test_sockets_deliveries_lag_and_replays(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        samples = metric_samples(await scrape(client))
        assert value(samples, "tidings_websocket_connections") == 1
        first = await send_to(client, admin, user)
        await next_of(ws, "notification")
        await send(client, admin, broadcast=True)
        await next_of(ws, "notification")
        websocket_route = {"method": "GET", "route": WS, "status": "101"}
        assert value(samples, "tidings_http_requests_total", **websocket_route) == 0  # counted when it ends
    samples = await eventually(client, lambda s: value(s, "tidings_websocket_connections") == 0)
    assert value(samples, "tidings_websocket_closes_total", code="1000") == 1
    assert value(samples, "tidings_http_requests_total", method="GET", route=WS, status="101") == 1
    # A socket's life is not a request's duration.
    assert value(samples, "tidings_http_request_duration_seconds_count", method="GET", route=WS) == 0
    missed = await send_to(client, admin, user)
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        await ws.send_json({"type": "resume", "after": first["id"]})
        replayed = [(await next_of(ws, "notification"))["notification"]["id"] for _ in range(2)]
        assert replayed[-1] == missed["id"]
        await pong(ws)
        samples = metric_samples(await scrape(client))
    assert value(samples, "tidings_notifications_sent_total", kind="targeted", sender="user") == 2
    assert value(samples, "tidings_notifications_sent_total", kind="broadcast", sender="user") == 1
    assert value(samples, "tidings_notifications_sent_total", kind="targeted", sender="key") == 0
    assert value(samples, "tidings_deliveries_total") == 4  # two live, two replayed
    assert value(samples, "tidings_delivery_lag_seconds_count") == 2  # live ones only
    assert 0 <= value(samples, "tidings_delivery_lag_seconds_sum") < TIMEOUT
    assert value(samples, "tidings_replays_total", kind="resume") == 1
    assert value(samples, "tidings_replays_total", kind="catch_up") == 0


async def test_an_api_key_send_is_counted_as_a_key(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    response = await client.post(
        f"{API}/api-keys", json={"name": "billing", "scopes": ["notifications:send"]}, headers=admin.headers
    )
    key = (await response.json())["key"]
    body = {"title": "t", "body": "b", "user_ids": [user.id, admin.id]}
    response = await client.post(f"{API}/notifications", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status == 201, await response.text()
    samples = metric_samples(await scrape(client))
    assert value(samples, "tidings_notifications_sent_total", kind="targeted", sender="key") == 2


async def test_login_attempts_by_result(make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(login_attempts_per_account=1)
    user = await accounts.register()
    await accounts.login(user["email"])
    login = f"{API}/auth/login"
    await error_of(
        await client.post(login, json={"email": user["email"], "password": "wrong"}), 401, "invalid_credentials"
    )
    await error_of(await client.post(login, json={"email": user["email"], "password": PASSWORD}), 429, "rate_limited")
    samples = metric_samples(await scrape(client))
    for result in ("ok", "bad_credentials", "rate_limited"):
        assert value(samples, "tidings_login_attempts_total", result=result) == 1, result


async def test_sampled_dependencies_broker_and_job_failures(make_client: AppFactory) -> None:
    client, _, _ = await make_client(metrics_sample_interval=0.1, job_attempts=1, run_worker=False)
    assert client.app is not None
    jobs = client.app[jobs_key]

    async def fails() -> None:
        raise RuntimeError("boom")

    jobs.register("always_fails", fails)  # before the worker starts, as the app registers its own
    worker = asyncio.create_task(jobs.run_worker(1))
    try:
        await jobs.enqueue("always_fails")
        samples = await eventually(client, lambda s: value(s, "tidings_job_failures_total", job="always_fails") == 1)
        assert value(samples, "tidings_broker_subscription_up") == 1
        assert value(samples, "tidings_broker_reconnects_total") == 0
        samples = await eventually(client, lambda s: value(s, "tidings_jobs", state="dead") == 1)
        assert value(samples, "tidings_ready") == 1
        assert value(samples, "tidings_dependency_up", dependency="mongodb") == 1
        assert value(samples, "tidings_dependency_up", dependency="redis") == 1
    finally:
        await jobs.stop_worker()
        await asyncio.wait_for(worker, TIMEOUT)


# promtool, the alert rules and the dashboard


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `bash scripts/install-system.sh --ops` installs Debian's prometheus")
    return path


async def test_promtool_accepts_the_live_metrics(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        await send_to(client, admin, user)
        await next_of(ws, "notification")
        text = await scrape(client)
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool(), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    # promtool exits 3 for lint problems and 1 for errors; both fail here, with what it said.
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "command",
    [("check", "rules", "alerts.yml"), ("test", "rules", "alerts.test.yml"), ("check", "config", "prometheus.yml")],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_promtool_accepts_the_rules_their_tests_and_the_scrape_config(command: tuple[str, ...]) -> None:
    # `test rules` evaluates each alert over made-up series: it fires when it should, not before its `for:`.
    result = subprocess.run(  # noqa: S603 - a fixed tool on the repository's files
        [promtool(), *command], cwd=ALERTS.parent, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_the_operators_guide_promises_exist() -> None:
    rules = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert {"TidingsBrokerDown", "TidingsHighErrorRate", "TidingsDeliveryLagHigh", "TidingsNotReady"} <= rules


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names(text: str) -> set[str]:
    """The series names the app exports, including those of labelled metrics that have no sample yet."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES.get(family.type, ("",))
    }


METRIC_NAME = re.compile(r"\btidings_[a-z_]+\b")


def _used_names() -> dict[str, set[str]]:
    alerts = yaml.safe_load(ALERTS.read_text())
    rule_text = " ".join(rule["expr"] for group in alerts["groups"] for rule in group["rules"])
    dashboard = json.loads(DASHBOARD.read_text())
    panel_text = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", []) if "expr" in target
    )
    return {"alerts.yml": set(METRIC_NAME.findall(rule_text)), "tidings.json": set(METRIC_NAME.findall(panel_text))}


async def test_the_rules_and_the_dashboard_read_only_exported_metrics(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    await accounts.user()
    exported = exported_names(await scrape(client))
    used = _used_names()
    assert used["alerts.yml"] and used["tidings.json"]
    for source, names in used.items():
        assert names <= exported, f"{source} uses metrics the app does not export: {sorted(names - exported)}"
    # The dashboard shows the three fixed names.
    for name in ("tidings_http_requests_total", "tidings_http_request_duration_seconds_bucket"):
        assert name in used["tidings.json"]
    assert "tidings_websocket_connections" in used["tidings.json"]
