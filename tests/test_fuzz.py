"""Fuzzing from the app's own OpenAPI document: no request, valid or hostile, gets a 5xx or an error in another shape.

schemathesis turns each documented operation into a Hypothesis strategy of requests, positive (what the document
allows) and negative (what it refuses), sent as an admin and anonymously. The app is served as `tidings serve`
serves it (an AppRunner on a TCP port, no handler cancellation), and the requests go from a worker thread, so the
server has the test's event loop to itself. Every failing run is reported, after the whole run, with a curl command
for its smallest failing request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import ClientSession, web
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis.core.result import Err

from tests.conftest import PASSWORD, drop_test_data, make_settings
from tests.helpers import API
from tidings.documents import User
from tidings.documents.ids import parse_object_id
from tidings.server.app import create_app

Case = schemathesis.Case[Any]
Operation = schemathesis.APIOperation[Any, Any, Any, Any]

# Requests per run: a run is one operation, one caller (admin or anonymous) and one generation mode (positive or
# negative), and an operation that takes no input is sent once. About 1,800 requests in all.
EXAMPLES = 25
ERROR_KEYS = {"code", "message", "details"}
ADMIN_EMAIL = "fuzz-admin@example.com"


@dataclass(frozen=True)
class Served:
    url: str
    # Ids of real records, for the path parameters of extra admin runs (random ids only ever reach a 404).
    known: dict[str, str]


@dataclass(frozen=True)
class Run:
    label: str
    strategy: SearchStrategy[Case]
    as_admin: bool


@dataclass
class Tally:
    """What the fuzzer sent and got, and what went wrong."""

    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


def problem(method: str, response: schemathesis.Response) -> str | None:
    """What is wrong with this response, or None: a 5xx, or an error not in the one JSON error shape."""
    status = response.status_code
    if status >= 500:
        return f"answered {status}: {response.content[:300]!r}"
    if status < 400:
        return None
    content_type = ",".join(response.headers.get("content-type", []))
    if content_type.partition(";")[0].strip() != "application/json":
        return f"answered {status} with Content-Type {content_type!r}"
    if method == "HEAD":  # no body to look at
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return f"answered {status} with a body that is not JSON: {response.content[:300]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if (
        not isinstance(error, dict)
        or set(body) != {"error"}
        or not set(error) <= ERROR_KEYS
        or not all(isinstance(error.get(key), str) and error[key] for key in ("code", "message"))
    ):
        return f"answered {status} with an error not in the error shape: {body!r}"
    return None


def fuzz_one(run: Run, send: Callable[[Case], None]) -> None:
    """EXAMPLES requests from the run's strategy, the same ones every time; a failure is shrunk to its smallest
    request, which `send` raises for."""

    # A fixed seed per run rather than derandomize=True, which seeds from the test function's code: the same for
    # every run here, so the admin's and the anonymous caller's runs of an operation would send the same requests.
    @seed(zlib.crc32(run.label.encode()))
    @settings(
        max_examples=EXAMPLES,
        database=None,  # seeded: nothing to replay from an example database
        deadline=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),  # slow, filtered or large examples are the point here
        print_blob=False,
    )
    @given(case=run.strategy)
    def test(case: Case) -> None:
        send(case)

    # Unsatisfiable: a negative run of an operation that takes no input has nothing to get wrong.
    with contextlib.suppress(Unsatisfiable):
        test()


def operations(url: str, *, security_parameters: bool) -> Iterator[Operation]:
    """The operations of the document. With security parameters schemathesis makes up Authorization headers itself
    (garbage ones in negative mode); without, the caller's own header goes out with every request."""
    config = schemathesis.Config.from_dict({"generation": {"with-security-parameters": security_parameters}})
    # Not fuzzed: the WebSocket, which OpenAPI cannot describe (tests/test_ws*.py cover it). Nor, by construction,
    # DELETE (or PATCH) of the admin's own account: its id is never among the known ids and random ids never match
    # it, and deleting or demoting the admin would turn the rest of its runs into 401s and 403s.
    schema = schemathesis.openapi.from_url(f"{url}/api/docs/openapi.json", config=config).exclude(path=f"{API}/ws")
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # an operation schemathesis cannot read: the document is broken
        yield result.ok()


def plan(served: Served) -> list[Run]:
    positive, negative = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
    runs: list[Run] = []
    for operation in operations(served.url, security_parameters=False):
        name = f"{operation.method.upper()} {operation.path}"
        for mode in (positive, negative):
            runs.append(Run(f"{name} (admin, {mode.value})", operation.as_strategy(mode), as_admin=True))
        known = {parameter.name: served.known[parameter.name] for parameter in operation.path_parameters}
        if known:
            strategy = operation.as_strategy(path_parameters=known)
            runs.append(Run(f"{name} (admin, known ids)", strategy, as_admin=True))
    for operation in operations(served.url, security_parameters=True):
        name = f"{operation.method.upper()} {operation.path}"
        for mode in (positive, negative):
            runs.append(Run(f"{name} (anonymous, {mode.value})", operation.as_strategy(mode), as_admin=False))
    return runs


def fuzz(served: Served) -> Tally:
    """The whole run, in a worker thread (schemathesis and requests are synchronous)."""
    tally = Tally()
    with requests.Session() as session:

        def admin_headers() -> dict[str, str]:
            """A fresh session for each run: the fuzzer's own POST /auth/logout and /auth/logout-all end them."""
            login = {"email": ADMIN_EMAIL, "password": PASSWORD}
            response = session.post(f"{served.url}{API}/auth/login", json=login, timeout=10)
            assert response.status_code == 200, response.text
            return {"Authorization": f"Bearer {response.json()['access_token']}"}

        def sender(label: str, headers: dict[str, str]) -> Callable[[Case], None]:
            def send(case: Case) -> None:
                response = case.call(base_url=served.url, session=session, headers=headers, timeout=10)
                tally.statuses[response.status_code] += 1
                wrong = problem(case.method.upper(), response)
                if wrong is not None:
                    curl = case.as_curl_command(headers=headers, base_url=served.url)
                    raise AssertionError(f"{label} {wrong}\n    {curl}")

            return send

        for run in plan(served):
            try:
                fuzz_one(run, sender(run.label, admin_headers() if run.as_admin else {}))
            except Exception as exc:  # one failing run must not hide the others
                tally.failures.append(describe(run.label, exc))
    return tally


def describe(label: str, exc: BaseException) -> str:
    """What failed, with what Hypothesis wraps (a flaky failure carries the first call's error)."""
    text = str(exc) if isinstance(exc, AssertionError) else f"{label}: {exc!r}"
    if isinstance(exc, BaseExceptionGroup):
        text += "".join(f"\n  caused by {inner!r}" for inner in exc.exceptions)
    return text


async def register(session: ClientSession, email: str, username: str) -> str:
    body = {"email": email, "username": username, "password": PASSWORD}
    async with session.post(f"{API}/auth/register", json=body) as response:
        assert response.status == 201, await response.text()
        user_id: str = (await response.json())["id"]
        return user_id


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """The app on a free port, with an admin (promoted in the database, as conftest's Accounts does), another user
    and a notification to the admin."""
    # Login's per-address limits (attempts and failures) would answer most of the fuzzer's logins 429 before looking
    # at them.
    app_settings = make_settings(login_attempts_per_address=1_000_000, login_failures_per_address=1_000_000)
    runner = web.AppRunner(create_app(app_settings))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with ClientSession(base_url=url) as session:
            admin_id = await register(session, ADMIN_EMAIL, "fuzz_admin")
            admin = await User.get(parse_object_id(admin_id))
            assert admin is not None
            await admin.set({User.is_admin: True})
            user_id = await register(session, "fuzz-user@example.com", "fuzz_user")
            login = {"email": ADMIN_EMAIL, "password": PASSWORD}
            async with session.post(f"{API}/auth/login", json=login) as response:
                assert response.status == 200, await response.text()
                headers = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
            sent = {"title": "t", "body": "b", "user_ids": [admin_id]}
            async with session.post(f"{API}/notifications", json=sent, headers=headers) as response:
                assert response.status == 201, await response.text()
                notification_id = (await response.json())["notifications"][0]["id"]
            key = {"name": "fuzz", "scopes": ["users:read"]}
            async with session.post(f"{API}/api-keys", json=key, headers=headers) as response:
                assert response.status == 201, await response.text()
                key_id = (await response.json())["id"]
        yield Served(url, {"user_id": user_id, "notification_id": notification_id, "key_id": key_id})
    finally:
        await runner.cleanup()
        await drop_test_data(app_settings)


# The server runs in this process while Hypothesis generates requests in a worker thread; pymongo's server selection
# uses the global `random`, which Hypothesis then takes for a strategy's own use and warns about.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_no_request_from_the_openapi_document_gets_a_5xx_or_a_stray_error_shape(served: Served) -> None:
    started = time.monotonic()
    tally = await asyncio.to_thread(fuzz, served)
    elapsed = time.monotonic() - started
    print(f"fuzz: {tally.requests} requests in {elapsed:.1f} s, statuses {sorted(tally.statuses.items())}")
    assert not tally.failures, "\n\n".join(tally.failures)
    assert tally.requests > 1000, tally.statuses  # it did run
