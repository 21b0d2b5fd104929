"""The authenticated hot path: GET /api/v1/users/me on one tidings process vs a bare aiohttp handler, with wrk.

    .venv/bin/python bench/auth_hot_path.py [--rounds 3] [--seconds 10] [--connections 64] [--threads 2]

Starts, each in its own process: the bare app (bench/bare_app.py: uvloop, no middlewares, no access log), one
tidings server with ACCESS_LOG=0 and one with ACCESS_LOG=1 (each with its own fresh database and Redis prefix).
Registers and logs in a user through the API, then, in every round, runs wrk with the same Authorization header
against the bare app and both tidings processes, one after the other. Prints requests/s, the ratio to the bare
app (target: >= 0.60), wrk's p50/p99 latency and the server's CPU time per request. Then logs out through the API
and checks that the very next GET /users/me with that token is 401 (revocation is immediate, even for a token the
cache had just served hundreds of thousands of times). Finally drops the databases, deletes the Redis keys and
stops the processes. Exit status 1 when the revocation check fails or wrk saw errors.
"""

from __future__ import annotations

import argparse
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

TARGET_RATIO = 0.60
PATH = f"{API}/users/me"


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


async def run(args: argparse.Namespace) -> int:
    log_dir = bench_log_dir()
    # One database and Redis prefix per tidings process: the two runs share nothing.
    isolations = [Isolation.new("bench", "auth"), Isolation.new("bench", "authlog")]
    bare = script_server("bare", Path(__file__).with_name("bare_app.py"), log_dir, "/")
    quiet = tidings_server("tidings", isolations[0], log_dir, access_log=False)
    logged = tidings_server("tidings-access-log", isolations[1], log_dir, access_log=True)
    servers = [bare, quiet, logged]
    ok = False
    try:
        log(f"starting processes (logs in {log_dir})")
        for server in servers:
            await server.launch()
        accounts: dict[str, Account] = {}
        async with aiohttp.ClientSession() as session:
            for server in (quiet, logged):
                accounts[server.name] = await register_and_login(session, server.url, "hot")
            # The bare app ignores the header; it gets one so that the requests are the same bytes.
            accounts["bare"] = accounts["tidings"]
            for server in servers:
                status = await status_of(session, server, accounts[server.name].access_token)
                if status != 200:
                    raise RuntimeError(f"{server.name}: GET {PATH} answered {status}")
        load = load_average()
        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, GET {PATH} with a valid bearer token; "
            f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        )
        for server in servers:  # warm-up, not reported
            measure(server, accounts[server.name].access_token, args, seconds=2)
        ratios: list[float] = []
        ratios_logged: list[float] = []
        per_server: dict[str, list[Measured]] = {server.name: [] for server in servers}
        for round_number in range(1, args.rounds + 1):
            results = {server.name: measure(server, accounts[server.name].access_token, args) for server in servers}
            for name, measured in results.items():
                per_server[name].append(measured)
            base = results["bare"]
            ratios.append(results["tidings"].wrk.requests_per_second / base.wrk.requests_per_second)
            ratios_logged.append(results["tidings-access-log"].wrk.requests_per_second / base.wrk.requests_per_second)
            print(f"round {round_number} (load average {load_average()[0]:.2f})")
            print(row("bare aiohttp", base, None))
            print(row("tidings ACCESS_LOG=0", results["tidings"], base))
            print(row("tidings ACCESS_LOG=1", results["tidings-access-log"], base))
        print("\nsummary over rounds (median, min-max):")
        for name, values in per_server.items():
            rps = [m.wrk.requests_per_second for m in values]
            cpu = [m.cpu_us_per_request for m in values]
            p50 = [m.wrk.p50_ms for m in values]
            p99 = [m.wrk.p99_ms for m in values]
            print(
                f"  {name:<20} {statistics.median(rps):7.0f} req/s ({min(rps):.0f}-{max(rps):.0f})  "
                f"p50 {statistics.median(p50):.2f} ms  p99 {statistics.median(p99):.2f} ms ({min(p99):.2f}-"
                f"{max(p99):.2f})  cpu {statistics.median(cpu):.1f} us/req"
            )
        ratio = statistics.median(ratios)
        print(
            f"  ratio tidings/bare:            {ratio:.2f} ({min(ratios):.2f}-{max(ratios):.2f})  "
            f"target >= {TARGET_RATIO:.2f}: {'met' if ratio >= TARGET_RATIO else 'MISSED'}"
        )
        print(
            f"  ratio tidings(access log)/bare: {statistics.median(ratios_logged):.2f} "
            f"({min(ratios_logged):.2f}-{max(ratios_logged):.2f})"
        )
        errors = sum(m.wrk.errors for values in per_server.values() for m in values)
        if errors:
            print(f"  WARNING: {errors} socket errors or non-2xx responses during the runs")
        print("\nrevocation right after the runs:")
        revoked = [await check_revocation(server, accounts[server.name]) for server in (quiet, logged)]
        ok = all(revoked) and errors == 0
    finally:
        for server in servers:
            server.stop()
        for isolation in isolations:
            await isolation.adrop()
        log("stopped the processes, dropped the database and deleted the Redis keys")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sys.exit(uvloop.run(run(args)))


if __name__ == "__main__":
    main()
