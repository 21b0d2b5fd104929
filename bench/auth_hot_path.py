"""The authenticated hot path: GET /api/v1/users/me on one tidings process vs a bare aiohttp handler, with wrk.

    .venv/bin/python bench/auth_hot_path.py [--rounds 5] [--seconds 10] [--connections 64] [--threads 1] [--no-pin]

Starts, each in its own process: the bare app (bench/bare_app.py: uvloop, no middlewares, no access log) and three
tidings servers, each with its own fresh database and Redis prefix: the defaults (JSON access log and metrics on),
METRICS=0 and ACCESS_LOG=0. Registers and logs in a user through the API, then, in every round, runs wrk with the
same Authorization header against the four, one after the other, each round starting with the next one (so that no
server always runs right after the same other). Prints requests/s, the ratio to the bare app, wrk's p50, p99 and max
latency and the server's CPU time per request, then checks the targets (docs/performance.md):

- the defaults hold at least 0.7x of the bare app's requests/s;
- metrics cost at most 5% of the requests/s (defaults against METRICS=0);
- the access log costs at most 25 us of CPU per request (defaults against ACCESS_LOG=0);
- the defaults' p99 is within 3x of the bare app's, and their max within 50 ms.

Then logs out through the API and checks that the very next GET /users/me with that token is 401 (revocation is
immediate, even for a token the cache had just served hundreds of thousands of times). Finally drops the databases,
deletes the Redis keys and stops the processes. Exit status 1 when the revocation check fails or wrk saw errors
(a missed target is reported, not an error: the figures depend on the machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import uvloop

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    API,
    Account,
    WrkResult,
    bench_log_dir,
    cpu_seconds,
    load_average,
    log,
    register_and_login,
    script_server,
    tidings_server,
    wrk,
)
from tests.launcher import Isolation, ServerProcess

PATH = f"{API}/users/me"
# With --pin (the default on 2 CPUs or more): every server on CPU 0, wrk on CPU 1, so that the server and the load
# generator do not take turns on one core, which moved results by 30% between identical runs.
SERVER_CPUS, WRK_CPUS = {0}, {1}
TARGET_RATIO = 0.70
TARGET_METRICS_COST = 0.05
TARGET_ACCESS_LOG_US = 25.0
TARGET_P99_TIMES_BARE = 3.0
TARGET_MAX_MS = 50.0
# The tidings variants: name, ACCESS_LOG, extra environment.
VARIANTS: tuple[tuple[str, bool, dict[str, str]], ...] = (
    ("tidings defaults", True, {}),
    ("tidings METRICS=0", True, {"METRICS": "0"}),
    ("tidings ACCESS_LOG=0", False, {}),
)


@dataclass(frozen=True)
class Measured:
    wrk: WrkResult
    cpu_us_per_request: float


def measure(server: ServerProcess, token: str, args: argparse.Namespace, seconds: int | None = None) -> Measured:
    before = cpu_seconds(server.pid)
    result = wrk(
        server.url + PATH,
        threads=args.threads,
        connections=args.connections,
        seconds=seconds or args.seconds,
        headers=[f"Authorization: Bearer {token}"],
        cpus=WRK_CPUS if args.pin else None,
    )
    used = cpu_seconds(server.pid) - before
    return Measured(result, used / max(result.requests, 1) * 1e6)


async def status_of(session: aiohttp.ClientSession, server: ServerProcess, token: str) -> int:
    async with session.get(server.url + PATH, headers={"Authorization": f"Bearer {token}"}) as response:
        await response.read()
        return response.status


async def check_revocation(server: ServerProcess, account: Account) -> bool:
    """Log out; the very next GET /users/me with that access token must be 401."""
    async with aiohttp.ClientSession() as session:
        before = await status_of(session, server, account.access_token)
        async with session.post(
            server.url + f"{API}/auth/logout",
            json={"refresh_token": account.refresh_token},
            headers={"Authorization": f"Bearer {account.access_token}"},
        ) as response:
            logout_status = response.status
        after = await status_of(session, server, account.access_token)
    ok = before == 200 and logout_status == 204 and after == 401
    print(
        f"  {server.name:<20} GET /users/me {before} -> POST /auth/logout {logout_status} -> "
        f"very next GET /users/me {after}: {'OK, revoked at once' if ok else 'FAILED'}"
    )
    return ok


def row(name: str, measured: Measured, bare: Measured | None) -> str:
    ratio = f"{measured.wrk.requests_per_second / bare.wrk.requests_per_second:5.2f}" if bare else "    -"
    errors = f"  ERRORS {measured.wrk.errors}" if measured.wrk.errors else ""
    return f"  {name:<22} {measured.wrk}  ratio {ratio}  cpu {measured.cpu_us_per_request:6.1f} us/req{errors}"


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of the process (the runtime may have started some) onto `cpus`; threads started later inherit."""
    for thread in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(thread), cpus)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


async def run(args: argparse.Namespace) -> int:
    log_dir = bench_log_dir()
    # One database and Redis prefix per tidings process: the runs share nothing.
    isolations = [Isolation.new("bench", f"auth{index}") for index in range(len(VARIANTS))]
    bare = script_server("bare", Path(__file__).with_name("bare_app.py"), log_dir, "/")
    variants = [
        tidings_server(name.replace(" ", "-").replace("=", ""), isolation, log_dir, access_log=access_log, **extra)
        for (name, access_log, extra), isolation in zip(VARIANTS, isolations, strict=True)
    ]
    names = {bare.name: "bare aiohttp"} | {
        server.name: name for server, (name, _, _) in zip(variants, VARIANTS, strict=True)
    }
    servers = [bare, *variants]
    ok = False
    try:
        log(f"starting processes (logs in {log_dir})")
        for server in servers:
            await server.launch()
            if args.pin:
                pin(server.pid, SERVER_CPUS)
        accounts: dict[str, Account] = {}
        async with aiohttp.ClientSession() as session:
            for server in variants:
                accounts[server.name] = await register_and_login(session, server.url, "hot")
            # The bare app ignores the header; it gets one so that the requests are the same bytes.
            accounts[bare.name] = accounts[variants[0].name]
            for server in servers:
                status = await status_of(session, server, accounts[server.name].access_token)
                if status != 200:
                    raise RuntimeError(f"{server.name}: GET {PATH} answered {status}")
        load = load_average()
        pinned = f"servers on CPU {SERVER_CPUS}, wrk on CPU {WRK_CPUS}" if args.pin else "not pinned"
        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, GET {PATH} with a valid bearer token; "
            f"{pinned}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        )
        for server in servers:  # warm-up, not reported
            measure(server, accounts[server.name].access_token, args, seconds=2)
        per_server: dict[str, list[Measured]] = {server.name: [] for server in servers}
        for round_number in range(1, args.rounds + 1):
            # Each round starts with the next server, so that none always runs right after the same one.
            shift = (round_number - 1) % len(servers)
            order = servers[shift:] + servers[:shift]
            measured_now = {server.name: measure(server, accounts[server.name].access_token, args) for server in order}
            results = {server.name: measured_now[server.name] for server in servers}
            first = names[order[0].name]
            print(f"round {round_number} (load average {load_average()[0]:.2f}; {first} ran first)")
            for name, measured in results.items():
                per_server[name].append(measured)
                print(row(names[name], measured, None if name == bare.name else results[bare.name]))

        def median(name: str, figure: str) -> float:
            values = [getattr(m.wrk, figure) if figure != "cpu" else m.cpu_us_per_request for m in per_server[name]]
            return statistics.median(values)

        print("\nsummary over rounds (medians):")
        for name in per_server:
            print(
                f"  {names[name]:<22} {median(name, 'requests_per_second'):7.0f} req/s  "
                f"p50 {median(name, 'p50_ms'):.2f} ms  p99 {median(name, 'p99_ms'):.2f} ms  "
                f"max {median(name, 'max_ms'):.2f} ms  cpu {median(name, 'cpu'):.1f} us/req"
            )
        defaults, no_metrics, no_log = (server.name for server in variants)
        ratio = median(defaults, "requests_per_second") / median(bare.name, "requests_per_second")
        metrics_cost = 1 - median(defaults, "requests_per_second") / median(no_metrics, "requests_per_second")
        log_us = median(defaults, "cpu") - median(no_log, "cpu")
        p99_times = median(defaults, "p99_ms") / median(bare.name, "p99_ms")
        slowest = median(defaults, "max_ms")
        print("\ntargets (the defaults):")
        print(
            f"  requests/s vs bare        {ratio:.2f}x    target >= {TARGET_RATIO:.2f}x: "
            f"{verdict(ratio >= TARGET_RATIO)}"
        )
        print(
            f"  metrics cost              {metrics_cost:+.1%}   target <= {TARGET_METRICS_COST:.0%}: "
            f"{verdict(metrics_cost <= TARGET_METRICS_COST)}"
        )
        print(
            f"  access log CPU            {log_us:.1f} us/req  target <= {TARGET_ACCESS_LOG_US:.0f} us: "
            f"{verdict(log_us <= TARGET_ACCESS_LOG_US)}"
        )
        print(
            f"  p99 vs bare               {p99_times:.2f}x    target <= {TARGET_P99_TIMES_BARE:.0f}x: "
            f"{verdict(p99_times <= TARGET_P99_TIMES_BARE)}"
        )
        print(
            f"  max latency               {slowest:.1f} ms  target <= {TARGET_MAX_MS:.0f} ms: "
            f"{verdict(slowest <= TARGET_MAX_MS)}"
        )
        errors = sum(m.wrk.errors for values in per_server.values() for m in values)
        if errors:
            print(f"  WARNING: {errors} socket errors or non-2xx responses during the runs")
        print("\nrevocation right after the runs:")
        revoked = [await check_revocation(server, accounts[server.name]) for server in variants]
        ok = all(revoked) and errors == 0
    finally:
        for server in servers:
            server.stop()
        for isolation in isolations:
            await isolation.adrop()
        log("stopped the processes, dropped the databases and deleted the Redis keys")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    pinnable = len(os.sched_getaffinity(0)) >= 2
    parser.add_argument("--threads", type=int, default=1 if pinnable else 2)
    parser.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=pinnable, help="servers on CPU 0, wrk on CPU 1"
    )
    args = parser.parse_args()
    sys.exit(uvloop.run(run(args)))


if __name__ == "__main__":
    main()
