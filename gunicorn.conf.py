"""Gunicorn settings for production: `gunicorn -c gunicorn.conf.py` serves `server.app:app_factory` with uvloop.

Read from the environment: TIDINGS_HOST (default 127.0.0.1; the Docker image sets 0.0.0.0), TIDINGS_PORT (8080),
WEB_CONCURRENCY (workers; default: the CPUs this process may run on) and LISTEN_BACKLOG (the listen queue, as for
`tidings serve`; gunicorn's own default is 2048). Anything else can be overridden on the command line or in
GUNICORN_CMD_ARGS, as usual for gunicorn.

Logs: every line is JSON on stderr. The app's own loggers are set up by `app_factory` (server.logs), gunicorn's
messages go through the same formatter (logconfig_dict below), and the access log is the app's JSON `AccessLogger`
(one line per request, path without the query string), wired in `post_worker_init`. gunicorn's own access log
(`accesslog`, `--access-logfile`, `access_log_format`) is not used: aiohttp's worker would pass it a text format
and no way to choose the logger class. ACCESS_LOG=0 turns the access log off, as for `tidings serve`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from aiohttp import web
from aiohttp.worker import GunicornWebWorker

from tidings.server.keys import settings_key
from tidings.server.logs import AccessLogger
from tidings.server.runner import TidingsRunner
from tidings.server.settings import listen_backlog

wsgi_app = "tidings.server.app:app_factory"
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
# LISTEN_BACKLOG): gunicorn listens with it, and so does each worker's runner (below), as aiohttp's worker would
# otherwise listen again on the same socket with aiohttp's default of 128.
backlog = listen_backlog(os.environ)

# Seconds. A worker whose event loop stops answering for `timeout` is killed and replaced. On SIGTERM (or a reload)
# each worker stops accepting, closes open WebSockets and gives requests in flight 95% of `graceful_timeout` to finish
# (aiohttp's worker derives its shutdown timeout from it). `keepalive` is how long an idle keep-alive connection stays
# open: longer than nginx's upstream keepalive_timeout (60 s by default) so that the proxy, not the app, closes it.
timeout = 30
graceful_timeout = 30
keepalive = 75

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
    """Refuse set-ups that only work in one process, before any worker starts."""
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


def post_worker_init(worker: Any) -> None:
    """Have aiohttp's worker serve the app through tidings' runner, as `tidings serve` does: access logged with the
    app's JSON AccessLogger, requests that aiohttp's HTTP parser refuses answered with the API's JSON error.

    aiohttp's worker accepts a factory that returns a `web.AppRunner` and then uses that runner as it is, so the
    runner here carries what the worker would otherwise take from gunicorn's settings (keep-alive, shutdown timeout),
    and the listen backlog, which the worker would otherwise leave at aiohttp's 128.
    """
    if not isinstance(worker, GunicornWebWorker):
        return

    factory = worker.wsgi
    cfg = worker.cfg

    async def app_runner() -> web.AppRunner:
        app = await factory()
        return TidingsRunner(
            app,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("tidings.access") if app[settings_key].access_log else None,
            keepalive_timeout=cfg.keepalive,
            shutdown_timeout=cfg.graceful_timeout / 100 * 95,
            backlog=cfg.backlog,
        )

    worker.wsgi = app_runner
