"""Shared by the benchmark scripts: server processes, /proc figures, API helpers, wrk and clean-up.

MONGODB_URL and REDIS_URL say where MongoDB (or FerretDB) and Redis are (default: the project's, on 27017 and 6379);
they must be on this machine. Everything talks to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from tests.launcher import MONGODB_URL, REDIS_URL, Isolation, ServerProcess, free_port, run_cli, server_env

API = "/api/v1"
for _url in (MONGODB_URL, REDIS_URL):
    if urlsplit(_url).hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"bench: {_url} is not on 127.0.0.1; the benchmarks only run against local services")
JWT_SECRET = "bench-secret-" + "b" * 48
PASSWORD = "bench password 123"  # noqa: S105 - the throw-away accounts of a benchmark database
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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


def pid_listening_on(port: int) -> int | None:
    """The process that listens on TCP `port` on this machine (e.g. the shared FerretDB), or None when it cannot be
    found (no such listener, or its /proc entries are not readable by this user)."""
    sockets: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEXADDR:HEXPORT; state 0A is LISTEN; field 9 is the socket's inode.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return None
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in sockets for fd in (process / "fd").iterdir()):
                return int(process.name)
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return None


# Server processes


def tidings_server(
    name: str, isolation: Isolation, log_dir: Path, *, access_log: bool = False, **extra: str
) -> ServerProcess:
    # Development, as on a laptop; no login rate limit in the way of registering many accounts.
    env = server_env(
        isolation,
        jwt_secret=JWT_SECRET,
        environment="development",
        access_log=access_log,
        log_level="INFO",
        LOGIN_ATTEMPTS_PER_ADDRESS="1000000",
        LOGIN_FAILURES_PER_ADDRESS="1000000",
        LOGIN_ATTEMPTS_PER_ACCOUNT="1000000",
        **extra,
    )
    return ServerProcess(name, env, log_dir, ready_path="/health/live")


def script_server(name: str, script: Path, log_dir: Path, ready_path: str) -> ServerProcess:
    """A bare comparison app (bench/bare_*.py), `script --port <port>` with this interpreter."""
    port = free_port()
    argv = [sys.executable, str(script), "--port", str(port)]
    return ServerProcess(name, {}, log_dir, argv=argv, port=port, ready_path=ready_path)


def bench_log_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tidings-bench-"))


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


async def create_admin(env: Mapping[str, str], email: str, username: str) -> None:
    """`tidings create-admin`, the password on standard input."""
    result = await run_cli(
        env, "create-admin", "--email", email, "--username", username, stdin=f"{PASSWORD}\n".encode()
    )
    if result.code != 0:
        raise RuntimeError(f"create-admin failed: {result.stdout}{result.stderr}")


# wrk


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors, timeouts and non-2xx/3xx responses
    max_ms: float = float("nan")  # the slowest request

    def __str__(self) -> str:
        return (
            f"{self.requests_per_second:9.0f} req/s  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms  "
            f"max {self.max_ms:7.2f} ms"
        )


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
    # "Latency   avg   stdev   max   +/- stdev"
    latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", output, re.MULTILINE)
    slowest = _ms(latency.group(1)) if latency else float("nan")
    return WrkResult(float(rps.group(1)), int(total.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), errors, slowest)


def wrk(
    url: str,
    *,
    threads: int,
    connections: int,
    seconds: int,
    headers: Sequence[str] = (),
    cpus: set[int] | None = None,
) -> WrkResult:
    """Run wrk against `url`; with `cpus`, wrk runs on those CPUs only (the server on the others)."""
    executable = shutil.which("wrk") or "/usr/bin/wrk"
    argv = [executable, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    result = subprocess.run(
        [*argv, url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
        stdin=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
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


async def run_interruptible(work: Callable[[], Awaitable[int]]) -> int:
    """Run a benchmark; Ctrl-C or SIGTERM end it the same way, through its clean-up, with 128 + the signal."""
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def interrupt(signum: int) -> None:
        received.append(signum)
        task.cancel()

    # Both on the loop: once uvloop handles any signal, asyncio's own Ctrl-C handling no longer fires.
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt, signum)
    try:
        return await work()
    except asyncio.CancelledError:
        if not received:
            raise
        log(f"interrupted ({signal.Signals(received[0]).name})")
        return 128 + received[0]
