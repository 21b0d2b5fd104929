"""Server processes for the tests and the benchmarks: a port, an environment, a data set of their own, start and stop;
and backing services of a test's own (redis-server, FerretDB) that a fault drill may kill and start again.

Imported by tests/ (live_server, test_multiprocess, test_wheel, test_cli, test_drills) and by bench/common.py, so it
needs nothing from pytest. MONGODB_URL and REDIS_URL say where the services are (default: the project's local ones).
FERRETDB_BACKEND (default postgresql, as for scripts/services.sh) says where a FerretDB of a test's own keeps its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from pymongo import MongoClient
from pymongo.errors import PyMongoError

if TYPE_CHECKING:
    from tidings.server.settings import Settings

HOST = "127.0.0.1"
MONGODB_URL = os.environ.get("MONGODB_URL") or "mongodb://127.0.0.1:27017"
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
TIDINGS = Path(sys.executable).with_name("tidings")  # the console script next to this interpreter (.venv/bin)
ROOT = Path(__file__).resolve().parents[1]
# Built by scripts/install-system.sh; the project's FerretDB, and any a test starts of its own.
FERRETDB = ROOT / ".cache" / "bin" / "ferretdb-v1.24.2"
# Starts the project's services; it also makes and drops the PostgreSQL databases of test FerretDBs.
SERVICES = ROOT / "scripts" / "services.sh"
FERRETDB_BACKEND = os.environ.get("FERRETDB_BACKEND") or "postgresql"
FERRETDB_GOGC = "400"  # scripts/services.sh's default (docs/scaling.md)
START_TIMEOUT = 60.0  # a cold start imports a lot; every wait ends as soon as the server answers
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 60.0
# Passed on from this process; nothing else is, so no PYTHONPATH or stray TIDINGS_* setting changes what runs.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


class LaunchError(RuntimeError):
    """A server or CLI process did not start, died or hung; the message carries its output."""


_handed_out: set[int] = set()


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit (children inherit it) up to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def free_port() -> int:
    """A port nothing listens on, never the same twice in this process (the kernel may hand a closed one out again)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port: int = probe.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def http_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    """The status of GET path on 127.0.0.1:port, or None when nothing answers."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


# Data


@dataclass(frozen=True)
class Isolation:
    """A database and a Redis key prefix of their own, so a server touches nothing else; `drop` removes both."""

    db: str
    prefix: str
    mongodb_url: str = MONGODB_URL
    redis_url: str | None = REDIS_URL  # None or "": the in-process broker, no Redis keys

    @classmethod
    def new(cls, kind: str, label: str, **services: Any) -> Isolation:
        """`tidings_<kind>_<label>_<unique>` and `<kind>:<label>:<unique>:`, e.g. kind "test" or "bench"."""
        unique = uuid.uuid4().hex[:12]
        return cls(f"tidings_{kind}_{label}_{unique}", f"{kind}:{label}:{unique}:", **services)

    @classmethod
    def of(cls, settings: Settings) -> Isolation:
        return cls(settings.mongodb_db, settings.redis_prefix, settings.mongodb_url, settings.redis_url)

    def drop(self) -> None:
        mongo: MongoClient[Any] = MongoClient(self.mongodb_url, serverSelectionTimeoutMS=5000)
        with mongo:
            mongo.drop_database(self.db)
        if not self.redis_url:
            return
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=5)
        # A test that stops its own Redis (an outage) may leave nothing to connect to; its keys went with it.
        with contextlib.suppress(redis.ConnectionError), contextlib.closing(client):
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])

    async def adrop(self) -> None:
        await asyncio.to_thread(self.drop)


def server_env(
    isolation: Isolation,
    *,
    jwt_secret: str,
    origins: str | None = None,
    environment: str = "test",
    access_log: bool = False,
    log_level: str = "WARNING",
    **extra: str,
) -> dict[str, str]:
    """The whole environment of a server process or of the CLI: its data, a secret, and cheap password hashing."""
    env = {key: os.environ[key] for key in INHERITED if key in os.environ}
    env.update(
        {
            "TIDINGS_ENV": environment,
            "MONGODB_URL": isolation.mongodb_url,
            "MONGODB_DB": isolation.db,
            "REDIS_URL": isolation.redis_url or "",
            "REDIS_PREFIX": isolation.prefix,
            "JWT_SECRET": jwt_secret,
            # Accounts are set-up, not what is tested or measured.
            "PASSWORD_TIME_COST": "1",
            "PASSWORD_MEMORY_KIB": "1024",
            "ACCESS_LOG": "true" if access_log else "false",
            "LOG_LEVEL": log_level,
        }
    )
    if origins is not None:
        env["ALLOWED_ORIGINS"] = origins
    env.update(extra)
    return env


def settings_env(settings: Settings, **options: Any) -> dict[str, str]:
    """`server_env` for the data and secret of in-process test settings (conftest.make_settings)."""
    return server_env(Isolation.of(settings), jwt_secret=settings.jwt_secret, **options)


# Processes


class ServerProcess:
    """A server in a subprocess, logging to a file: `<executable> serve --host 127.0.0.1 --port <port>`, or `argv`.

    It runs in a session of its own, so a Ctrl-C meant for this process does not reach it; `stop` does.
    """

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        executable: Path = TIDINGS,
        argv: Sequence[str] | None = None,
        port: int | None = None,
        cwd: Path | None = None,
        ready_path: str = "/health/ready",
    ) -> None:
        self.name = name
        self.env = dict(env)
        self.port = free_port() if port is None else port
        self.argv = [str(executable), "serve", "--host", HOST, "--port", str(self.port)] if argv is None else [*argv]
        self.cwd = cwd
        self.ready_path = ready_path
        self.log = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def start(self) -> None:
        with self.log.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise LaunchError(f"{self.name} exited with status {self.process.returncode}:\n{self.tail()}")

    def ready(self) -> bool:
        """Whether `ready_path` answers 200 now; raises at once if the process has exited."""
        self.check_alive()
        return http_status(self.port, self.ready_path) == 200

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        wait_ready(self, timeout=timeout)

    async def launch(self, ready_within: float = START_TIMEOUT) -> None:
        """Start and wait until ready without blocking the event loop; stopped again if it never gets there."""
        self.start()
        try:
            await asyncio.to_thread(wait_ready, self, timeout=ready_within)
        except BaseException:
            self.stop()
            raise

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def tail(self, since: int = 0, lines: int = 60) -> str:
        """The last lines of the log, from byte `since` on (a `log_size()` taken earlier)."""
        try:
            with self.log.open("rb") as log:
                log.seek(since)
                return "\n".join(log.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        """SIGTERM without waiting: the server stops gracefully (its WebSockets get 1001)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after `timeout`; only this process."""
        if self.process is None:
            return
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_ready(*servers: ServerProcess, timeout: float = START_TIMEOUT) -> None:
    """Poll until every server answers 200 (they start in parallel); fail with the log tail of any that exits."""
    deadline = time.monotonic() + timeout
    waiting: Iterable[ServerProcess] = servers
    while waiting := [server for server in waiting if not server.ready()]:
        if time.monotonic() > deadline:
            raise LaunchError("\n".join(f"{s.name} not ready within {timeout:.0f}s:\n{s.tail()}" for s in waiting))
        # The process gives no signal when it listens, so poll briefly.
        time.sleep(0.1)


# Backing services of a test's own


class ServiceProcess:
    """A redis-server or FerretDB of a test's own, on a port of its own, so the test can kill, pause or stop it and
    start it again on the same port (its clients see a restart). Never one of the project's shared services.

    `start` returns once the service answers; every wait is bounded.
    """

    def __init__(
        self, name: str, argv: Sequence[str], log_dir: Path, port: int, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = [*argv]
        self.env = dict(env) if env is not None else None
        self.port = port
        self.log = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def answers(self) -> bool:
        """Whether the service answers a ping now."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start it (again, after a kill or stop) and wait until it answers."""
        assert not self.running, f"{self.name} is running already"
        with self.log.open("ab") as log:  # appended: a restart keeps the earlier lines
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None:
                raise LaunchError(f"{self.name} exited with status {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise LaunchError(f"{self.name} did not answer on port {self.port} within {timeout:.0f}s")
            time.sleep(0.05)  # a service gives no signal when it listens, so poll briefly

    def kill(self) -> None:
        """SIGKILL: gone at once, its connections dropped, nothing flushed."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (a paused process is continued first, so it can act on it), then SIGKILL after `timeout`."""
        if not self.running:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def close(self) -> None:
        """`stop`, and remove what the service keeps outside `log_dir` (a FerretDB's PostgreSQL database)."""
        self.stop()

    def pause(self) -> None:
        """SIGSTOP: the port stays open and connections stay up, but nothing is answered until `resume`."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class RedisProcess(ServiceProcess):
    """`redis-server` on 127.0.0.1:<port>, in memory only (no RDB, no AOF): a restart starts empty."""

    def __init__(self, log_dir: Path, *, name: str = "redis", port: int | None = None) -> None:
        port = free_port() if port is None else port
        binary = shutil.which("redis-server") or "redis-server"
        data = log_dir / f"{name}-data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(data)]
        super().__init__(name, argv, log_dir, port)

    @staticmethod
    def installed() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def answers(self) -> bool:
        try:
            with contextlib.closing(self.client()) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False


def _services(*args: str) -> str:
    """`scripts/services.sh ARGS`'s output; a failure raises with its message."""
    try:
        done = subprocess.run(  # noqa: S603 - our own script
            [str(SERVICES), *args], capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise LaunchError(f"scripts/services.sh {' '.join(args)} hung") from None
    if done.returncode != 0:
        raise LaunchError(f"scripts/services.sh {' '.join(args)} failed:\n{done.stderr.strip()}")
    return done.stdout.strip()


def _drop_postgresql_database(name: str) -> None:
    _services("postgresql-database", "drop", name)


class FerretDBProcess(ServiceProcess):
    """FerretDB (FERRETDB) on 127.0.0.1:<port>, its data kept across restarts.

    On PostgreSQL (`backend`, by default FERRETDB_BACKEND) the data is a database of its own in the project's cluster
    (the one scripts/services.sh runs, which must be up): created at the first `start`, dropped by `close` (or, if
    nothing called it, when this interpreter exits). On SQLite, the data is files in `data_dir`.
    """

    def __init__(
        self,
        log_dir: Path,
        data_dir: Path,
        *,
        name: str = "ferretdb",
        port: int | None = None,
        backend: str = FERRETDB_BACKEND,
    ) -> None:
        if backend not in ("postgresql", "sqlite"):
            raise ValueError(f"FerretDB backend must be postgresql or sqlite, not {backend!r}")
        port = free_port() if port is None else port
        self.backend = backend
        self.data_dir = data_dir
        self.database: str | None = None  # the PostgreSQL database, once created
        self._drop: weakref.finalize[[str], FerretDBProcess] | None = None
        # SCHED_BATCH, as scripts/services.sh starts the project's: its wakeups do not preempt the server.
        batch = ["chrt", "--batch", "0"] if shutil.which("chrt") else []
        argv = [*batch, str(FERRETDB), "-listen", f"{HOST}:{port}", "-log-level", "warn"]
        if backend == "sqlite":
            argv += ["-handler", "sqlite", "-data", str(data_dir)]
        # Go's collector as scripts/services.sh sets it for the project's FerretDB.
        env = {"GOGC": FERRETDB_GOGC, **os.environ}
        super().__init__(name, argv, log_dir, port, env)

    @staticmethod
    def installed() -> bool:
        return FERRETDB.is_file()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.backend == "postgresql" and self.database is None:
            database = f"tidings_ferretdb_{uuid.uuid4().hex[:12]}"
            postgresql_url = _services("postgresql-database", "create", database)
            self.database = database
            self._drop = weakref.finalize(self, _drop_postgresql_database, database)
            self.argv += ["-handler", "postgresql", "-postgresql-url", postgresql_url]
        super().start(timeout)

    def close(self) -> None:
        """`stop`, then drop its PostgreSQL database (SQLite files stay in `data_dir`, which the caller owns)."""
        self.stop()
        if self._drop is not None:
            self._drop()

    @property
    def url(self) -> str:
        return f"mongodb://{HOST}:{self.port}"

    def answers(self) -> bool:
        client: MongoClient[Any] = MongoClient(self.url, serverSelectionTimeoutMS=500, connectTimeoutMS=500)
        try:
            with client:
                client.admin.command("ping")
                return True
        except PyMongoError:
            return False


# The CLI


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


async def run_cli(
    env: Mapping[str, str],
    *args: str,
    stdin: bytes = b"",
    time_limit: float = CLI_TIMEOUT,
    executable: Path = TIDINGS,
    cwd: Path | None = None,
) -> CliResult:
    """Run `tidings <args>` to its end; a hang fails with every thread's stack (faulthandler, on SIGABRT)."""
    process = await asyncio.create_subprocess_exec(
        str(executable),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "PYTHONFAULTHANDLER": "1"},
        cwd=cwd,
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    process.stdin.write(stdin)
    process.stdin.close()
    stdout, stderr = asyncio.create_task(process.stdout.read()), asyncio.create_task(process.stderr.read())
    try:
        code = await asyncio.wait_for(process.wait(), timeout=time_limit)
    except TimeoutError:
        process.send_signal(signal.SIGABRT)
        await process.wait()
        raise LaunchError(f"tidings {' '.join(args)} hung:\n{(await stderr).decode()}") from None
    return CliResult(code, (await stdout).decode(), (await stderr).decode())
