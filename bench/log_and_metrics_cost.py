"""What one request's access log line and metrics cost, in-process: the parts of the hot path issue 14 budgets.

    .venv/bin/python bench/log_and_metrics_cost.py [--requests 200000]

Measures, on a mocked request and response (no network, no server):

- the JSON access log (server/logs.py, AccessLogger.log), its lines written to a file in batches of 1, 8 and
  64 lines (FLUSH_LINES): what building a line costs, and what the write per batch adds;
- the same line through logging's JsonFormatter, as it was before the access log built its own lines;
- a request's metrics (Metrics.observe_request: a counter and a histogram), in one process, and in prometheus-client's
  multiprocess mode (memory-mapped files, as under gunicorn).

Prints microseconds per request, the median of 5 runs. The end-to-end cost, on a real server under wrk, is
bench/auth_hot_path.py's.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from tests.unit.test_logs import access_logger  # an access logger as configure_logging sets one up
from tidings.server import logs
from tidings.server.logs import JsonFormatter

RUNS = 5


def per_call_us(function: Callable[[], None], calls: int) -> float:
    timings = []
    for _ in range(RUNS):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        timings.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(timings)


def log_costs(requests: int) -> None:
    request = make_mocked_request("GET", "/api/v1/users/me?x=1")
    response = web.Response(status=200, headers={"X-Request-ID": "0" * 32})
    # A file, as stderr redirected to a log is: each write is a system call, which batching saves.
    with tempfile.TemporaryFile("w", encoding="utf-8") as log_file:
        for lines in (1, 8, 64):
            logs.FLUSH_LINES = lines  # a write every `lines` lines (no event loop here: no timer)
            log_line = access_logger(log_file)[0].log
            cost = per_call_us(lambda log_line=log_line: log_line(request, response, 0.0012), requests)  # type: ignore[misc]
            print(f"  access log, a write per {lines:>2} lines     {cost:6.2f} us/request")
        logs.FLUSH_LINES = 64
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger("bench.through_logging")
        logger.propagate = False
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        fields = {
            "request_id": "0" * 32,
            "method": "GET",
            "path": "/api/v1/users/me",
            "status": 200,
            "duration_ms": 1.2,
            "remote": "127.0.0.1",
        }
        cost = per_call_us(lambda: logger.info("GET /api/v1/users/me 200", extra=fields), requests)
        print(f"  through logging.Logger and JsonFormatter {cost:6.2f} us/request (before)")


def metrics_cost(requests: int) -> float:
    from tidings.server.adapters.metrics import Metrics

    metrics = Metrics()
    return per_call_us(lambda: metrics.observe_request("GET", "/api/v1/users/me", 200, 0.0012), requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--multiprocess-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.multiprocess_child:
        print(f"{metrics_cost(args.requests):.3f}")
        return
    print(f"one request's access log line and metrics, median of {RUNS} runs of {args.requests} requests")
    log_costs(args.requests)
    print(f"  metrics, one process                     {metrics_cost(args.requests):6.2f} us/request")
    # prometheus-client chooses its value storage at import, from the environment: a fresh interpreter.
    with tempfile.TemporaryDirectory(prefix="tidings-bench-metrics-") as directory:
        child = subprocess.run(
            [sys.executable, __file__, "--multiprocess-child", "--requests", str(args.requests)],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory},
            capture_output=True,
            text=True,
            check=True,
        )
    print(f"  metrics, multiprocess mode (gunicorn)    {float(child.stdout):6.2f} us/request")


if __name__ == "__main__":
    main()
