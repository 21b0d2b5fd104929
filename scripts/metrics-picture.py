"""Make docs/img/metrics.png: Prometheus' own graph page over a live tidings under generated traffic.

    .venv/bin/python scripts/metrics-picture.py        # about 100 seconds

docs/operations.md shows the picture in place of a screenshot of the Grafana dashboard (no Grafana runs on these
machines). What it does, on the project's MongoDB (FerretDB) and Redis (MONGODB_URL, REDIS_URL; scripts/services.sh):

1. starts `tidings serve` (bench/common.py's tidings_server: a database and a Redis prefix of its own, cheap password
   hashing, login rate limits lifted, METRICS_SAMPLE_INTERVAL=1) and creates an admin with `tidings create-admin`;
2. starts /usr/bin/prometheus on a config of its own (scrape and evaluate every second, deploy/prometheus/alerts.yml
   as its rules), its data in a temporary directory;
3. generates traffic for DURATION seconds, its rate rising and falling: registrations, logins (a few with a wrong
   password), reads of /users/me, the inbox and its unread count, SOCKETS WebSockets that read every frame (a couple
   of them close now and then, reconnect and `resume`), targeted sends by the admin a few times a second and a
   broadcast every BROADCAST_EVERY seconds;
4. at SCREENSHOT_AT seconds, while the traffic runs, opens Prometheus' graph page with the dashboard's queries
   (QUERIES) in headless Chromium (Playwright) and saves a full-page screenshot;
5. stops everything and removes the database, the Redis keys and the temporary directory, also after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ and tests/ are the repository's, not installed packages

from bench.common import (  # noqa: E402
    API,
    Account,
    create_admin,
    log,
    login,
    register_and_login,
    run_interruptible,
    tidings_server,
)
from tests.launcher import HOST, Isolation, ServerProcess, free_port, http_status  # noqa: E402

OUTPUT = ROOT / "docs" / "img" / "metrics.png"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = Path("/usr/bin/prometheus")
CHROMIUM = Path("/usr/bin/chromium")
PROMETHEUS_READY_WITHIN = 30.0

USERS = 30
SOCKETS = 40  # one per user, and a second one for the first SOCKETS - USERS users
READERS = 6  # concurrent loops reading /users/me, the inbox and its count
WRONG_PASSWORDS = 6
DURATION = 90.0
SCREENSHOT_AT = 75.0
BROADCAST_EVERY = 10.0
CHURN_EVERY = 7.0  # a couple of sockets close, reconnect and resume this often
ADMIN_EMAIL = "admin@picture.example.com"

# The Grafana dashboard's panels (deploy/grafana/tidings.json), over a short rate window for a short run.
QUERIES = (
    "sum by (route) (rate(tidings_http_requests_total[15s]))",
    "sum(tidings_websocket_connections)",
    "sum by (kind) (rate(tidings_notifications_sent_total[15s]))",
    "histogram_quantile(0.99, sum by (le) (rate(tidings_delivery_lag_seconds_bucket[15s])))",
)
# Injected before the page's scripts draw: no fixed navbar over the first graph, no controls the picture does not
# need, and graphs lower than the page's 400 px, narrowed by the 40 px the page shifts them right (else they stick out
# of the page, which then scrolls sideways).
PAGE_CSS = """
nav.navbar { display: none !important; }
body { padding-top: 0 !important; }
div.query-history, #add_graph, a[name=remove], .expression_select { display: none !important; }
.graph { min-height: 260px !important; width: calc(100% - 40px); }
"""
INJECT_CSS = f"""
document.addEventListener("DOMContentLoaded", () => {{
  const style = document.createElement("style");
  style.textContent = {PAGE_CSS!r};
  document.head.appendChild(style);
}});
"""
GRAPHS_DRAWN = f"document.querySelectorAll('.graph_area .graph svg path').length >= {len(QUERIES)}"


# Prometheus


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {alerts}
scrape_configs:
  - job_name: tidings
    metrics_path: /metrics
    static_configs:
      - targets: ["{target}"]
"""


@dataclass
class Prometheus:
    """/usr/bin/prometheus scraping one tidings, its config, data and log in `directory`."""

    directory: Path
    target: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        config = self.directory / "prometheus.yml"
        config.write_text(PROMETHEUS_CONFIG.format(alerts=ALERTS, target=self.target))
        argv = [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
        ]
        with (self.directory / "prometheus.log").open("wb") as output:
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )

    def tail(self) -> str:
        return "\n".join((self.directory / "prometheus.log").read_text(errors="replace").splitlines()[-20:])

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        """Until /-/ready answers 200 and the first scrape of tidings succeeded."""
        deadline = time.monotonic() + PROMETHEUS_READY_WITHIN
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.tail()}")
            if await asyncio.to_thread(http_status, self.port, "/-/ready") == 200:
                async with session.get(f"{self.url}/api/v1/query", params={"query": "up"}) as response:
                    result = (await response.json())["data"]["result"]
                if result and result[0]["value"][1] == "1":
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(
            f"prometheus not ready or not scraping within {PROMETHEUS_READY_WITHIN:.0f}s:\n{self.tail()}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# Traffic


@dataclass
class Socket:
    """One WebSocket of a user: reads every frame, reconnects and resumes from the newest id it got."""

    account: Account
    ws: aiohttp.ClientWebSocketResponse | None = None
    last_id: str | None = None
    frames: int = 0
    connects: int = 0


@dataclass
class Traffic:
    base: str
    session: aiohttp.ClientSession
    admin_token: str
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    accounts: list[Account] = field(default_factory=list)
    sockets: list[Socket] = field(default_factory=list)
    socket_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    requests: int = 0
    sent: int = 0
    failures: int = 0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def intensity(self) -> float:
        """How busy clients are now, between about 0.3 and 2: a slow wave, with a burst in the middle."""
        t = self.elapsed
        burst = 0.7 if 40.0 <= t < 50.0 else 0.0
        return max(0.3, 1.0 + 0.5 * math.sin(2 * math.pi * t / 30.0) + burst)

    async def pause(self, seconds: float) -> bool:
        """Sleep `seconds` (less when busier), with jitter; False once the traffic is stopping."""
        delay = seconds * self.rng.uniform(0.5, 1.5) / self.intensity()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)
        return not self.stopping.is_set()

    async def request(self, method: str, path: str, token: str, json: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.request(method, f"{self.base}{API}{path}", headers=headers, json=json) as response:
            self.requests += 1
            body = await response.json()
            if response.status >= 400:
                self.failures += 1
                log(f"{method} {path}: {response.status} {body}")
            return body

    # Users arrive: register, log in, open their sockets.

    async def arrive(self) -> None:
        for index in range(USERS):
            account = await register_and_login(self.session, self.base, f"user{index:02d}")
            self.requests += 2
            self.accounts.append(account)
            for _ in range(2 if index < SOCKETS - USERS else 1):
                socket = Socket(account)
                self.sockets.append(socket)
                self.socket_tasks.append(asyncio.create_task(self.keep_open(socket)))
            if not await self.pause(0.5):
                return

    async def wrong_passwords(self) -> None:
        for _ in range(WRONG_PASSWORDS):
            if not await self.pause(6.0):
                return
            email = self.rng.choice(self.accounts).email
            body = {"email": email, "password": "not the password"}
            async with self.session.post(f"{self.base}{API}/auth/login", json=body) as response:
                self.requests += 1
                assert response.status == 401, response.status

    async def keep_open(self, socket: Socket) -> None:
        headers = {"Authorization": f"Bearer {socket.account.access_token}"}
        while not self.stopping.is_set():
            try:
                async with self.session.ws_connect(f"{self.base}{API}/ws", headers=headers) as ws:
                    ready = await ws.receive_json(timeout=10)
                    assert ready["type"] == "ready", ready
                    socket.ws, socket.connects = ws, socket.connects + 1
                    if self.stopping.is_set():
                        break
                    if socket.last_id is not None:
                        await ws.send_json({"type": "resume", "after": socket.last_id})
                    async for message in ws:
                        if message.type is not aiohttp.WSMsgType.TEXT:
                            break
                        event = message.json()
                        socket.frames += 1
                        if event["type"] == "notification":
                            socket.last_id = max(socket.last_id or "", event["notification"]["id"])
            except (aiohttp.ClientError, TimeoutError) as error:
                self.failures += 1
                log(f"socket of {socket.account.email}: {error!r}")
            finally:
                socket.ws = None
            # A client that closed (or lost) its socket comes back after a short, jittered backoff.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.rng.uniform(0.3, 1.5))

    async def churn(self) -> None:
        """Now and then a couple of clients close their socket; `keep_open` reconnects and resumes."""
        while await self.pause(CHURN_EVERY):
            open_sockets = [socket.ws for socket in self.sockets if socket.ws is not None]
            for ws in self.rng.sample(open_sockets, min(2, len(open_sockets))):
                await ws.close()

    # Reads and sends.

    async def read(self) -> None:
        while await self.pause(0.25):
            if not self.accounts:
                continue
            token = self.rng.choice(self.accounts).access_token
            path = self.rng.choices(
                ["/users/me", "/notifications?limit=20", "/notifications/unread-count"], weights=[2, 3, 4]
            )[0]
            await self.request("GET", path, token)

    async def send_targeted(self) -> None:
        while await self.pause(0.3):
            if not self.accounts:
                continue
            recipients = self.rng.sample(self.accounts, min(len(self.accounts), self.rng.randint(1, 4)))
            body = {
                "title": f"Order {self.rng.randint(1000, 9999)} shipped",
                "body": "Your parcel is on its way.",
                "data": {"url": "https://shop.example.com/orders"},
                "user_ids": [account.id for account in recipients],
            }
            await self.request("POST", "/notifications", self.admin_token, json=body)
            self.sent += len(recipients)

    async def broadcast(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), BROADCAST_EVERY)
            if self.stopping.is_set():
                return
            body = {"title": "Maintenance tonight", "body": "The shop pauses from 02:00 to 02:15.", "broadcast": True}
            await self.request("POST", "/notifications", self.admin_token, json=body)
            self.sent += 1

    async def run(self, duration: float) -> None:
        """All of the above for `duration` seconds (or until one fails), then close every socket."""
        loops = [self.arrive(), self.wrong_passwords(), self.churn(), self.send_targeted(), self.broadcast()]
        tasks = [asyncio.create_task(loop) for loop in [*loops, *(self.read() for _ in range(READERS))]]
        try:
            await asyncio.wait(tasks, timeout=duration, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            self.stopping.set()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            # Every keep_open ends once `stopping` is set and its socket is closed; one still connecting is cancelled.
            for socket in self.sockets:
                if socket.ws is not None:
                    await socket.ws.close()
            _, late = await asyncio.wait(self.socket_tasks, timeout=5) if self.socket_tasks else (set(), set())
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome


# The picture


def graph_url(prometheus: Prometheus, range_seconds: int) -> str:
    params: dict[str, str] = {}
    for index, expr in enumerate(QUERIES):
        params |= {
            f"g{index}.expr": expr,
            f"g{index}.tab": "0",  # the Graph tab, not the Console
            f"g{index}.stacked": "0",
            f"g{index}.range_input": f"{range_seconds}s",
        }
    return f"{prometheus.url}/graph?{urlencode(params)}"


async def screenshot(url: str, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.add_init_script(INJECT_CSS)
            await page.goto(url, wait_until="networkidle")
            await page.wait_for_function(GRAPHS_DRAWN, timeout=30_000)
            await page.wait_for_timeout(3000)
            await page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus ring
            await page.screenshot(path=output, full_page=True)
        finally:
            await browser.close()


async def main() -> int:
    directory = Path(tempfile.mkdtemp(prefix="tidings-picture-"))
    isolation = Isolation.new("picture", "metrics")
    server: ServerProcess = tidings_server("tidings", isolation, directory, METRICS_SAMPLE_INTERVAL="1")
    prometheus = Prometheus(directory, f"{HOST}:{server.port}")
    begun = time.monotonic()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            log(f"starting tidings on {server.url} and prometheus on {prometheus.url}")
            await server.launch()
            prometheus.start()
            await create_admin(server.env, ADMIN_EMAIL, "picture-admin")
            await prometheus.wait_ready(session)
            admin_token, _ = await login(session, server.url, ADMIN_EMAIL)
            traffic = Traffic(server.url, session, admin_token, random.Random(2024))  # noqa: S311 - traffic, not secrets
            log(f"traffic for {DURATION:.0f}s, the picture at {SCREENSHOT_AT:.0f}s")
            run = asyncio.create_task(traffic.run(DURATION))
            try:
                await asyncio.wait_for(asyncio.shield(run), SCREENSHOT_AT)
            except TimeoutError:
                # The whole run so far, from a few seconds before the traffic began to now.
                span = math.ceil(time.monotonic() - traffic.started) + 5
                await screenshot(graph_url(prometheus, span), OUTPUT)
                log(f"wrote {OUTPUT.relative_to(ROOT)} ({OUTPUT.stat().st_size // 1024} KiB)")
            await run
            frames = sum(socket.frames for socket in traffic.sockets)
            reconnects = sum(socket.connects for socket in traffic.sockets) - len(traffic.sockets)
            log(
                f"{traffic.requests} requests, {traffic.sent} notifications stored, {len(traffic.sockets)} sockets, "
                f"{frames} frames read, {reconnects} reconnects, {traffic.failures} failures"
            )
    finally:
        prometheus.stop()
        server.stop()
        await isolation.adrop()
        shutil.rmtree(directory, ignore_errors=True)
        log(f"done in {time.monotonic() - begun:.0f}s")
    return 0 if OUTPUT.exists() else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(run_interruptible(main)))
