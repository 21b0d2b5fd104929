"""Gunicorn settings for production: `gunicorn -c gunicorn.conf.py` serves `tidings.server.app:gunicorn_runner` with
uvloop.

Read from the environment: TIDINGS_HOST (default 127.0.0.1; the Docker image sets 0.0.0.0), TIDINGS_PORT (8080),
WEB_CONCURRENCY (workers; default: the CPUs this process may run on) and LISTEN_BACKLOG (the listen queue, as for
`tidings serve`; gunicorn's own default is 2048). Anything else can be overridden on the command line or in
GUNICORN_CMD_ARGS, as usual for gunicorn.

The worker serves the runner that `gunicorn_runner` makes from the app's settings (server/runner.py, `runner_for`),
as `tidings serve` does: aiohttp's worker takes a runner from its factory as it is, its documented alternative to
an app, so nothing here rebuilds the runner's options. Hence the settings the two share: `keepalive` is the runner's
KEEPALIVE_TIMEOUT, requests in flight get SHUTDOWN_TIMEOUT once the sockets are closed (which must end within
`graceful_timeout`, checked at start), and the listen queue is LISTEN_BACKLOG for gunicorn and the worker alike.

Logs: every line is JSON on stderr. The app's own loggers are set up by `gunicorn_runner` (server.logs), gunicorn's
messages go through the same formatter (logconfig_dict below), and the access log is the app's JSON `AccessLogger`
(one line per request, path without the query string). gunicorn's own access log (`accesslog`,
`--access-logfile`, `access_log_format`) is not used. ACCESS_LOG=0 turns the access log off, as for `tidings serve`.

Metrics: every worker writes its metrics to files in PROMETHEUS_MULTIPROC_DIR, and /metrics on any worker sums them
(server/adapters/metrics.py). The directory is made here unless the environment names one, emptied before the
first worker starts, and removed when gunicorn exits if it was made here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

# Before anything imports prometheus_client, which reads it once: the workers inherit it.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
        prefix="tidings-metrics-",
        dir="/dev/shm" if os.path.isdir("/dev/shm") else None,  # noqa: S108 - tmpfs: the workers write it often
    )
    os.environ["TIDINGS_METRICS_DIR_MADE"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]

from tidings.server.adapters.metrics import mark_process_dead, prepare_multiprocess_dir
from tidings.server.runner import KEEPALIVE_TIMEOUT
from tidings.server.settings import Settings, listen_backlog

wsgi_app = "tidings.server.app:gunicorn_runner"
worker_class = "aiohttp.GunicornUVLoopWebWorker"
proc_name = "tidings"


def _bind() -> str:
    host = os.environ.get("TIDINGS_HOST") or "127.0.0.1"
    port = os.environ.get("TIDINGS_PORT") or "8080"
    if ":" in host and not host.startswith("["):  # an IPv6 address
        host = f"[{host}]"
    return f"{host}:{port}"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects CPU pinning (taskset, cgroup cpusets)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


bind = [_bind()]
workers = int(os.environ.get("WEB_CONCURRENCY") or _cpus())
# Connections the kernel queues until a worker accepts them, enough for a reconnect storm (server/settings.py,
# LISTEN_BACKLOG): gunicorn listens with it, and so does each worker's runner, as aiohttp's worker would otherwise
# listen again on the same socket with aiohttp's default of 128.
backlog = listen_backlog(os.environ)

# Seconds. A worker whose event loop stops answering for `timeout` is killed and replaced. On SIGTERM (or a reload)
# each worker stops accepting, closes open WebSockets with 1001 and gives requests in flight SHUTDOWN_TIMEOUT to
# finish; gunicorn kills a worker still running after `graceful_timeout`. `keepalive` is the runner's (see above).
timeout = 30
graceful_timeout = 30
keepalive = int(KEEPALIVE_TIMEOUT)

# The workers' heartbeat files: on tmpfs where there is one (a container's disk can stall them).
if os.path.isdir("/dev/shm"):  # noqa: S108 - gunicorn's documented choice for containers
    worker_tmp_dir = "/dev/shm"  # noqa: S108

# gunicorn >= 25 opens a control socket for `gunicornc` under $HOME/.gunicorn/ by default: one path for every gunicorn
# of the user (two instances clash) and an unwritable home in the Docker image. tidings does not use it.
control_socket_disable = True

loglevel = os.environ.get("LOG_LEVEL", "info").lower()
errorlog = "-"
accesslog = None
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "tidings.server.logs.JsonFormatter"}},
    "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": loglevel.upper(), "handlers": ["json"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["json"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
    },
}


def on_starting(server: Any) -> None:
    """Refuse set-ups that cannot work, and empty the metrics directory, before any worker starts."""
    shutdown_timeout = Settings.from_env().shutdown_timeout
    if shutdown_timeout >= server.cfg.graceful_timeout:
        raise SystemExit(
            f"tidings: SHUTDOWN_TIMEOUT ({shutdown_timeout:g} s) must be shorter than gunicorn's graceful_timeout "
            f"({server.cfg.graceful_timeout} s), or workers are killed while they finish requests"
        )
    prepare_multiprocess_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if server.cfg.workers < 2:
        return
    if not os.environ.get("JWT_SECRET"):
        raise SystemExit(
            "tidings: JWT_SECRET must be set when running more than one worker (each worker would otherwise "
            "generate its own secret and reject the others' tokens)"
        )
    if os.environ.get("REDIS_URL") == "" and not os.environ.get("REDIS_SENTINELS"):
        raise SystemExit(
            "tidings: REDIS_URL is empty, which selects the in-process broker and rate limiter; they do not reach "
            "across workers. Set REDIS_URL, or run one worker (WEB_CONCURRENCY=1)."
        )


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited (a reload, a crash): its open sockets leave the metrics' live gauges."""
    mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    made = os.environ.get("TIDINGS_METRICS_DIR_MADE")
    if made and made == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(made, ignore_errors=True)
