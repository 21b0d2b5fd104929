"""deploy/nginx.conf in front of a real `tidings serve`, served by Debian's nginx.

The module runs one server process (its own database and Redis prefix) and one nginx (a temporary prefix, a
self-signed certificate, ports of its own). nginx serves deploy/nginx.conf as it is, with only what its header says
to replace replaced: the upstream address, the listen addresses, the static folder, the certificate and the access
log. Whether a request reached tidings at all is read from nginx's access log: its `upstream_status` is "-" for an
answer nginx gave alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from tests.conftest import PASSWORD, Account
from tests.helpers import error_of, json_of
from tests.launcher import (
    HOST,
    ROOT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Isolation,
    LaunchError,
    ServerProcess,
    free_port,
    run_cli,
    server_env,
)
from tests.realtime import API, TIMEOUT, next_of, pong, ready
from tidings.server.runner import KEEPALIVE_TIMEOUT
from tidings.server.settings import Settings

NGINX = Path("/usr/sbin/nginx")
OPENSSL = Path("/usr/bin/openssl")
CONFIG = ROOT / "deploy" / "nginx.conf"
STATIC = ROOT / "static"
# Debian's; deploy/nginx.conf relies on the http {} block that includes it, as /etc/nginx/nginx.conf does.
MIME_TYPES = Path("/etc/nginx/mime.types")
JWT_SECRET = "nginx-test-secret-" + "n" * 40
FAILURES_PER_ADDRESS = 3
FRESH_REQUEST_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module", autouse=True)
def nginx_is_installed() -> None:
    # Missing is a failure, not a skip: `make test` installs it (scripts/install-system.sh --ops).
    if not NGINX.exists():
        pytest.fail(f"{NGINX} is missing: `bash scripts/install-system.sh --ops` installs Debian's nginx")


# The async tests share the module's server and nginx, so they run in the module's event loop.
in_module_loop = pytest.mark.asyncio(loop_scope="module")


def replace_once(text: str, old: str, new: str) -> str:
    """`text` with `old` replaced; `old` must occur exactly once, so a changed deploy/nginx.conf fails loudly here
    instead of being tested with its production values left in."""
    count = text.count(old)
    assert count == 1, f"deploy/nginx.conf should hold {old!r} once, found it {count} times"
    return text.replace(old, new)


def site_config(
    *,
    upstream_port: int,
    https_port: int,
    http_port: int,
    certificate: Path,
    key: Path,
    access_log: Path,
) -> str:
    text = CONFIG.read_text(encoding="utf-8")
    for old, new in (
        ("server 127.0.0.1:8080;", f"server {HOST}:{upstream_port};"),
        ("listen 443 ssl;", f"listen {HOST}:{https_port} ssl;"),
        ("listen 80;", f"listen {HOST}:{http_port};"),
        ("listen [::]:443 ssl;", ""),
        ("listen [::]:80;", ""),
        ("alias /srv/tidings/static/;", f"alias {STATIC}/;"),
        ("ssl_certificate /etc/letsencrypt/live/tidings.example.com/fullchain.pem;", f"ssl_certificate {certificate};"),
        ("ssl_certificate_key /etc/letsencrypt/live/tidings.example.com/privkey.pem;", f"ssl_certificate_key {key};"),
        ("access_log /var/log/nginx/tidings.access.log tidings;", f"access_log {access_log} tidings;"),
    ):
        text = replace_once(text, old, new)
    return text


def main_config(prefix: Path, site: Path) -> str:
    """The nginx.conf around the site file: in the foreground, every path under the temporary prefix."""
    # As root, nginx would run its workers as nobody, who may not enter the temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp_paths = "".join(
        f"    {kind}_temp_path {prefix / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "daemon off;\n"
        "worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} notice;\n"
        f"{user}"
        "events {\n    worker_connections 256;\n}\n"
        "http {\n"
        f"    include {MIME_TYPES};\n"
        "    default_type application/octet-stream;\n"
        f"{temp_paths}"
        f"    include {site};\n"
        "}\n"
    )


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    if not OPENSSL.exists():
        pytest.fail(f"{OPENSSL} is missing: install Debian's openssl to make the test certificate")
    certificate, key = directory / "site.crt", directory / "site.key"
    done = subprocess.run(  # noqa: S603 - our own command line
        [
            str(OPENSSL),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={HOST}",
            "-addext",
            f"subjectAltName=IP:{HOST}",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"openssl req failed:\n{done.stderr}"
    return certificate, key


class NginxProcess:
    """Debian's nginx in the foreground (`daemon off`) with a prefix directory of its own."""

    def __init__(self, prefix: Path, https_port: int) -> None:
        self.prefix = prefix
        self.conf = prefix / "nginx.conf"
        self.log = prefix / "nginx.out"
        self.https_port = https_port
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self, *extra: str) -> list[str]:
        return [str(NGINX), "-p", str(self.prefix), "-c", str(self.conf), *extra]

    def check(self) -> None:
        """`nginx -t`: the configuration parses, and every file it names can be opened."""
        done = subprocess.run(self.argv("-t"), capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
        if done.returncode != 0:
            raise LaunchError(f"nginx -t refused the configuration:\n{done.stderr}")

    def output(self) -> str:
        parts = []
        for path in (self.log, self.prefix / "error.log"):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def start(self) -> None:
        with self.log.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def launch(self, context: ssl.SSLContext) -> None:
        """Start it and wait until it answers over TLS; stopped again when it never does."""
        self.start()
        try:
            await self._wait_answering(context)
        except BaseException:
            self.stop()
            raise

    async def _wait_answering(self, context: ssl.SSLContext) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        url = f"https://{HOST}:{self.https_port}/health/live"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            while True:
                if self.process.poll() is not None:
                    raise LaunchError(f"nginx exited with status {self.process.returncode}:\n{self.output()}")
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise LaunchError(f"nginx did not answer on port {self.https_port}:\n{self.output()}")
                await asyncio.sleep(0.05)  # nginx gives no signal when it listens, so poll briefly

    def stop(self) -> None:
        """SIGTERM (a fast shutdown: open WebSockets are not waited for), then SIGKILL for its process group, which
        holds only this nginx's master and workers (it runs in a session of its own)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Site:
    """tidings behind nginx: where each answers, and what nginx logged."""

    backend: ServerProcess
    isolation: Isolation
    https_port: int
    http_port: int
    tls: ssl.SSLContext
    access_log: Path

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.https_port}"

    def session(self, source: str = HOST) -> aiohttp.ClientSession:
        """A client of the public site, connecting from `source` (any address of 127.0.0.0/8 is this host's)."""
        connector = aiohttp.TCPConnector(ssl=self.tls, local_addr=(source, 0))
        return aiohttp.ClientSession(base_url=self.url, connector=connector)

    async def logged(self, request_id: str) -> dict[str, str]:
        """nginx's access log line of the request with this id, as its key=value fields and `remote_addr`; nginx
        writes it just after answering, so it is waited for."""
        marker = f" request_id={request_id} "
        deadline = time.monotonic() + TIMEOUT
        while True:
            text = self.access_log.read_text(errors="replace") if self.access_log.exists() else ""
            lines = [line for line in text.splitlines() if marker in line]
            if lines:
                assert len(lines) == 1, lines
                fields = dict(re.findall(r"(\w+)=(\S+)", lines[0]))
                return {**fields, "remote_addr": lines[0].split(" ", 1)[0]}
            assert time.monotonic() < deadline, f"no access log line with request id {request_id}:\n{text[-2000:]}"
            await asyncio.sleep(0.05)  # nginx signals nothing when it writes its log

    async def user_count(self, **query: Any) -> int:
        mongo: AsyncMongoClient[Any] = AsyncMongoClient(self.isolation.mongodb_url)
        try:
            return await mongo[self.isolation.db].users.count_documents(query)
        finally:
            await mongo.close()

    async def admin(self) -> Account:
        """An admin made the real way (the CLI), logged in through nginx."""
        unique = uuid.uuid4().hex[:10]
        email, username = f"admin-{unique}@example.com", f"admin_{unique}"
        result = await run_cli(
            self.backend.env, "create-admin", "--email", email, "--username", username, stdin=f"{PASSWORD}\n".encode()
        )
        assert result.code == 0, result.stderr
        return await self.login(email, username)

    async def user(self) -> Account:
        """A user registered and logged in through nginx."""
        unique = uuid.uuid4().hex[:10]
        email, username = f"user-{unique}@example.com", f"user_{unique}"
        async with (
            self.session() as http,
            http.post(f"{API}/auth/register", json={"email": email, "username": username, "password": PASSWORD}) as r,
        ):
            await json_of(r, 201)
        return await self.login(email, username)

    async def login(self, email: str, username: str) -> Account:
        async with self.session() as http:
            async with http.post(f"{API}/auth/login", json={"email": email, "password": PASSWORD}) as response:
                tokens = await json_of(response, 200)
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            async with http.get(f"{API}/users/me", headers=headers) as response:
                me = await json_of(response, 200)
        assert (me["email"], me["username"]) == (email, username), me
        return Account(me["id"], email, username, PASSWORD, tokens["access_token"], tokens["refresh_token"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    """One `tidings serve` (TRUST_FORWARDED_FOR=1, LOGIN_FAILURES_PER_ADDRESS=3) behind one nginx for the module;
    on the way out nginx and the server are stopped and the server's data dropped."""
    prefix = tmp_path_factory.mktemp("nginx")
    https_port, http_port = free_port(), free_port()
    isolation = Isolation.new("test", "nginx")
    env = server_env(
        isolation,
        jwt_secret=JWT_SECRET,
        origins=f"https://{HOST}:{https_port}",
        log_level="INFO",
        TRUST_FORWARDED_FOR="1",
        LOGIN_FAILURES_PER_ADDRESS=str(FAILURES_PER_ADDRESS),
    )
    backend = ServerProcess("tidings", env, prefix)
    certificate, key = self_signed_certificate(prefix)
    tls = ssl.create_default_context(cafile=str(certificate))
    access_log = prefix / "access.log"
    site_file = prefix / "tidings.conf"
    site_file.write_text(
        site_config(
            upstream_port=backend.port,
            https_port=https_port,
            http_port=http_port,
            certificate=certificate,
            key=key,
            access_log=access_log,
        ),
        encoding="utf-8",
    )
    nginx = NginxProcess(prefix, https_port)
    nginx.conf.write_text(main_config(prefix, site_file), encoding="utf-8")
    try:
        nginx.check()
        await backend.launch()
        try:
            await nginx.launch(tls)
            try:
                yield Site(backend, isolation, https_port, http_port, tls, access_log)
            finally:
                await asyncio.to_thread(nginx.stop)
        finally:
            await asyncio.to_thread(backend.stop)
    finally:
        await isolation.adrop()


def config_numbers(directive: str, unit: str = "s") -> list[int]:
    """The values of every `<directive> <number><unit>;` in deploy/nginx.conf."""
    found = [int(value) for value in re.findall(rf"^\s*{directive} (\d+){unit};", CONFIG.read_text(), re.MULTILINE)]
    assert found, f"deploy/nginx.conf sets no {directive}"
    return found


def test_the_config_keeps_to_the_settings_it_depends_on() -> None:
    """What cannot be watched in a short test: an idle WebSocket outlives nginx's timeouts because tidings pings it
    more often, idle upstream connections are closed by nginx before tidings closes them, and the body limits agree
    (the live tests below check 64 KiB at its edge)."""
    defaults = Settings()
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        for seconds in config_numbers(directive):
            assert seconds > 2 * defaults.ws_heartbeat, f"{directive} {seconds}s is not well above WS_HEARTBEAT"
    [keepalive] = config_numbers("keepalive_timeout")
    assert keepalive < KEEPALIVE_TIMEOUT
    [body_kib] = config_numbers("client_max_body_size", "k")
    assert body_kib * 1024 == defaults.max_body_bytes


@in_module_loop
async def test_rest_works_through_nginx(site: Site) -> None:
    unique = uuid.uuid4().hex[:10]
    email, username = f"rest-{unique}@example.com", f"rest_{unique}"
    async with site.session() as http:
        body = {"email": email, "username": username, "password": PASSWORD}
        async with http.post(f"{API}/auth/register", json=body) as response:
            user = await json_of(response, 201)
        async with http.post(f"{API}/auth/login", json={"email": email, "password": PASSWORD}) as response:
            tokens = await json_of(response, 200)
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        async with http.get(f"{API}/users/me", headers=headers) as response:
            me = await json_of(response, 200)
            request_id = response.headers["X-Request-ID"]
        async with http.get(f"{API}/users/me") as response:
            await error_of(response, 401, "not_authenticated")
    assert (me["id"], me["email"], me["username"]) == (user["id"], email, username)
    line = await site.logged(request_id)
    assert (line["upstream"], line["upstream_status"]) == (f"{HOST}:{site.backend.port}", "200"), line


@in_module_loop
async def test_nginx_and_tidings_log_one_request_id(site: Site) -> None:
    """A client's sane X-Request-ID reaches tidings; an unsafe one, or none, is replaced by nginx's own, which tidings
    keeps: the id in tidings' answer is then the one in nginx's log line."""
    sane = f"trace-{uuid.uuid4().hex[:12]}"
    async with site.session() as http:
        async with http.get("/health/live", headers={"X-Request-ID": sane}) as response:
            assert response.status == 200, await response.text()
            assert response.headers["X-Request-ID"] == sane
        answered = []
        for headers in ({"X-Request-ID": "not a safe id!"}, {}):
            async with http.get("/health/live", headers=headers) as response:
                assert response.status == 200, await response.text()
                answered.append(response.headers["X-Request-ID"])
    assert (await site.logged(sane))["upstream_status"] == "200"
    for request_id in answered:
        assert FRESH_REQUEST_ID.fullmatch(request_id), request_id
        # Had nginx not passed its id on, tidings would have made up another, found in no log line of nginx.
        assert (await site.logged(request_id))["upstream_status"] == "200"


@in_module_loop
async def test_websocket_works_through_nginx_and_resumes(site: Site) -> None:
    admin = await site.admin()

    async def send(http: aiohttp.ClientSession, title: str) -> str:
        body = {"title": title, "body": "through nginx", "user_ids": [admin.id]}
        async with http.post(f"{API}/notifications", json=body, headers=admin.headers) as response:
            [notification] = (await json_of(response, 201))["notifications"]
        notification_id: str = notification["id"]
        return notification_id

    async with site.session() as http:
        async with http.ws_connect(f"{API}/ws", headers=admin.headers) as ws:
            assert (await ready(ws))["user_id"] == admin.id
            first = await send(http, "first")
            live = await next_of(ws, "notification")
            assert (live["notification"]["id"], live["notification"]["title"]) == (first, "first")
        assert ws.closed

        missed = await send(http, "missed while away")

        async with http.ws_connect(f"{API}/ws", headers=admin.headers) as ws:
            await ready(ws)
            await ws.send_json({"type": "resume", "after": first})
            replayed = await next_of(ws, "notification")
            assert (replayed["notification"]["id"], replayed["notification"]["title"]) == (missed, "missed while away")
            # Messages are handled in order: the pong comes after the whole replay, so nothing else was replayed.
            await pong(ws)
            # And the socket is live again through nginx.
            after = await send(http, "live again")
            assert (await next_of(ws, "notification"))["notification"]["id"] == after


@in_module_loop
async def test_login_limits_count_each_client_address_not_nginx(site: Site) -> None:
    account = await site.user()
    wrong = {"email": account.email, "password": "not the password"}
    right = {"email": account.email, "password": PASSWORD}
    async with site.session(source="127.0.0.2") as guesser:
        for attempt in range(FAILURES_PER_ADDRESS):
            # A forged X-Forwarded-For changes nothing: tidings reads the last entry, the one nginx appends.
            forged = {"X-Forwarded-For": f"198.51.100.{attempt + 1}"}
            async with guesser.post(f"{API}/auth/login", json=wrong, headers=forged) as response:
                error = await error_of(response, 401, "invalid_credentials")
                request_id = response.headers["X-Request-ID"]
        assert (await site.logged(request_id))["remote_addr"] == "127.0.0.2"
        async with guesser.post(f"{API}/auth/login", json=right) as response:
            error = await error_of(response, 429, "rate_limited")
            assert int(response.headers["Retry-After"]) >= 1, error
    async with site.session(source="127.0.0.3") as other, other.post(f"{API}/auth/login", json=right) as response:
        tokens = await json_of(response, 200)
        assert tokens["access_token"]


def padded_register_body(size: int) -> tuple[str, bytes]:
    """A registration whose JSON is exactly `size` bytes (the password takes up the rest); and its email."""
    email = f"big-{uuid.uuid4().hex[:10]}@example.com"
    template = '{"email": "%s", "username": "big_%s", "password": "%s"}'
    empty = len((template % (email, "x" * 10, "")).encode())
    body = template % (email, uuid.uuid4().hex[:10], "p" * (size - empty))
    assert len(body.encode()) == size
    return email, body.encode()


@in_module_loop
async def test_nginx_refuses_a_body_over_64_kib_with_the_apps_json_error(site: Site) -> None:
    json_headers = {"Content-Type": "application/json"}
    users = await site.user_count()
    email, oversized = padded_register_body(100 * 1024)
    async with site.session() as http:
        async with http.post(f"{API}/auth/register", data=oversized, headers=json_headers) as response:
            refused = await error_of(response, 413, "payload_too_large")
            request_id = response.headers["X-Request-ID"]
            for name in ("X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy"):
                assert name in response.headers, name
        # One byte over MAX_BODY_BYTES is nginx's to refuse too; at the limit, the request reaches tidings.
        _, over = padded_register_body(Settings().max_body_bytes + 1)
        async with http.post(f"{API}/auth/register", data=over, headers=json_headers) as response:
            await error_of(response, 413, "payload_too_large")
            just_over_id = response.headers["X-Request-ID"]
        at_limit_email, at_limit = padded_register_body(Settings().max_body_bytes)
        async with http.post(f"{API}/auth/register", data=at_limit, headers=json_headers) as response:
            assert response.status != 413, await response.text()
            at_limit_id = response.headers["X-Request-ID"]
    assert (await site.logged(request_id))["upstream_status"] == "-"
    assert (await site.logged(just_over_id))["upstream_status"] == "-"
    assert (await site.logged(at_limit_id))["upstream_status"] != "-"

    # The same error as tidings answers itself.
    async with (
        aiohttp.ClientSession() as direct,
        direct.post(f"{site.backend.url}{API}/auth/register", data=oversized, headers=json_headers) as response,
    ):
        assert response.status == 413, await response.text()
        assert {"error": refused} == await response.json()

    assert await site.user_count(email=email) == 0
    # Only the at-the-limit registration, which tidings answered, may have added a user.
    assert await site.user_count() - await site.user_count(email=at_limit_email) == users


@in_module_loop
async def test_nginx_serves_static_files_and_hides_metrics(site: Site) -> None:
    files = sorted(path for path in STATIC.iterdir() if path.is_file())
    assert files, f"{STATIC} holds no file"
    security_headers = ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Content-Security-Policy")
    async with site.session() as http, aiohttp.ClientSession(base_url=site.backend.url) as direct:
        for path in files:
            request_id = f"static-{uuid.uuid4().hex[:12]}"
            async with http.get(f"/static/{path.name}", headers={"X-Request-ID": request_id}) as response:
                assert response.status == 200, path
                assert await response.read() == path.read_bytes(), path
                served = response.headers
            async with direct.get(f"/static/{path.name}") as response:
                assert response.status == 200, path
                by_tidings = response.headers
            # Every answer of tidings carries an X-Request-ID; nginx's own do not, and nobody upstream was asked.
            assert "X-Request-ID" in by_tidings and "X-Request-ID" not in served, path
            assert served["Server"] == "nginx" != by_tidings["Server"]
            assert (await site.logged(request_id))["upstream_status"] == "-", path
            assert {name: served.get(name) for name in security_headers} == {
                name: by_tidings.get(name) for name in security_headers
            }, path

        for metrics in ("/metrics", "/metrics?name=tidings_up"):
            async with http.get(metrics) as response:
                assert response.status == 404, metrics
        # tidings itself answers /metrics to a local scraper: the 404 above is nginx's.
        async with direct.get("/metrics") as response:
            assert response.status == 200, await response.text()


@in_module_loop
async def test_plain_http_is_redirected_to_https(site: Site) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{HOST}:{site.http_port}{API}/users/me?x=1", allow_redirects=False) as response,
    ):
        assert response.status == 301, await response.text()
        assert response.headers["Location"] == f"https://{HOST}{API}/users/me?x=1"
