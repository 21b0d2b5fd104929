"""Shared by the benchmark scripts: server processes, /proc figures, API helpers, wrk and clean-up.

MONGODB_URL and REDIS_URL say where MongoDB (or FerretDB) and Redis are (default: the project's, on 27017 and 6379);
they must be on this machine. Everything talks to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIDINGS = BIN / "tidings"
HOST = "127.0.0.1"
API = "/api/v1"
MONGODB_URL = os.environ.get("MONGODB_URL") or "mongodb://127.0.0.1:27017"
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
for _url in (MONGODB_URL, REDIS_URL):
    if urlsplit(_url).hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"bench: {_url} is not on 127.0.0.1; the benchmarks only run against local services")
JWT_SECRET = "bench-secret-" + "b" * 48
PASSWORD = "bench password 123"  # noqa: S105 - the throw-away accounts of a benchmark database
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit (children inherit it) up to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


# /proc figures of a process


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5), counted from the state field (3) after the command name.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# Server processes


@dataclass
class Server:
    """A server in its own process, with its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.log_dir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the process in a session of its own (so it gets no signal meant for this one)."""
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )
        return self.process

    async def start(self, ready_within: float = 60.0) -> None:
        """Launch, then wait until `ready_path` answers 200."""
        process = self.launch()
        deadline = time.monotonic() + ready_within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {process.returncode}; see {self.log_path}")
                try:
                    async with session.get(self.base + self.ready_path) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready within {ready_within:.0f}s; see {self.log_path}")

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} died with status {self.process.returncode}; see {self.log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; only this process (it runs in its own session)."""
        process = self.process
        if process is None:
            return
        if process.poll() is not None:
            log(f"{self.name} had already exited with status {process.returncode}")
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass(frozen=True)
class Isolation:
    """A database and a Redis key prefix of its own, so a benchmark touches nothing else."""

    db: str
    prefix: str

    @classmethod
    def new(cls, label: str) -> Isolation:
        unique = uuid.uuid4().hex[:10]
        return cls(f"tidings_bench_{label}_{unique}", f"bench:{label}:{unique}:")


def tidings_env(isolation: Isolation, *, access_log: bool = False, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    env.update(
        {
            "TIDINGS_ENV": "development",
            "JWT_SECRET": JWT_SECRET,
            "MONGODB_URL": MONGODB_URL,
            "MONGODB_DB": isolation.db,
            "REDIS_URL": REDIS_URL,
            "REDIS_PREFIX": isolation.prefix,
            "ACCESS_LOG": "1" if access_log else "0",
            # Accounts are set-up here, not what is measured: cheap hashing, no login rate limit in the way.
            "PASSWORD_TIME_COST": "1",
            "PASSWORD_MEMORY_KIB": "1024",
            "LOGIN_ATTEMPTS_PER_ADDRESS": "1000000",
            "LOGIN_ATTEMPTS_PER_ACCOUNT": "1000000",
        }
    )
    env.update(extra)
    return env


def tidings_server(name: str, isolation: Isolation, log_dir: Path, *, access_log: bool = False, **extra: str) -> Server:
    port = free_port()
    return Server(
        name,
        [str(TIDINGS), "serve", "--host", HOST, "--port", str(port)],
        tidings_env(isolation, access_log=access_log, **extra),
        port,
        "/health/live",
        log_dir,
    )


def bench_log_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tidings-bench-"))


async def drop(isolation: Isolation) -> None:
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(MONGODB_URL, serverSelectionTimeoutMS=5000)
    try:
        await mongo.drop_database(isolation.db)
    finally:
        await mongo.close()
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{isolation.prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await redis.delete(*keys[start : start + 1000])
    finally:
        await redis.aclose()


# API helpers


@dataclass(frozen=True)
class Account:
    id: str
    email: str
    access_token: str
    refresh_token: str


async def register_and_login(session: aiohttp.ClientSession, base: str, label: str) -> Account:
    email = f"{label}@bench.example.com"
    async with session.post(
        f"{base}{API}/auth/register", json={"email": email, "username": label, "password": PASSWORD}
    ) as response:
        body = await response.json()
        if response.status != 201:
            raise RuntimeError(f"register {label}: {response.status} {body}")
        user_id = body["id"]
    access, refresh = await login(session, base, email)
    return Account(user_id, email, access, refresh)


async def login(session: aiohttp.ClientSession, base: str, email: str) -> tuple[str, str]:
    async with session.post(f"{base}{API}/auth/login", json={"email": email, "password": PASSWORD}) as response:
        body = await response.json()
        if response.status != 200:
            raise RuntimeError(f"login {email}: {response.status} {body}")
        return body["access_token"], body["refresh_token"]


async def register_many(base: str, labels: Sequence[str], concurrency: int = 8) -> list[Account]:
    """Register and log in many accounts through the API, a few at a time."""
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one(label: str) -> Account:
            async with semaphore:
                return await register_and_login(session, base, label)

        return list(await asyncio.gather(*(one(label) for label in labels)))


def create_admin(env: Mapping[str, str], email: str, username: str, timeout: float = 60.0) -> None:
    """`tidings create-admin`, the password on standard input."""
    result = subprocess.run(
        [str(TIDINGS), "create-admin", "--email", email, "--username", username],
        input=PASSWORD + "\n",
        env=dict(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"create-admin failed: {result.stdout}{result.stderr}")


# wrk


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors, timeouts and non-2xx/3xx responses

    def __str__(self) -> str:
        return f"{self.requests_per_second:9.0f} req/s  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms"


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if match is None:
        raise ValueError(f"not a wrk duration: {value!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if not (rps and total and p50 and p99):
        raise RuntimeError(f"could not parse wrk output:\n{output}")
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(group) for group in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return WrkResult(float(rps.group(1)), int(total.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), errors)


def wrk(url: str, *, threads: int, connections: int, seconds: int, headers: Sequence[str] = ()) -> WrkResult:
    executable = shutil.which("wrk") or "/usr/bin/wrk"
    argv = [executable, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    result = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=seconds + 30, check=False, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr}")
    return parse_wrk(result.stdout)


# Figures


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"median {statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f})"
