"""Prometheus metrics (docs/operations.md): what tidings counts, and their text exposition for GET /metrics.

One `Metrics` per app, on its own registry, so that apps in one process (the tests) never share a count. Under
gunicorn, prometheus-client's multiprocess mode is on (PROMETHEUS_MULTIPROC_DIR, set by gunicorn.conf.py before any
worker starts): every worker writes its values to memory-mapped files there, and the exposition reads them all, so
any worker answers with the sum over every worker. Gauges sum too ("livesum": live workers only), except the
sampled ones, which every worker measures alike and which therefore report their largest value ("livemax"), and
the up-or-down ones, which report their smallest ("livemin": one worker without its broker is a worker that cannot
deliver).

Names follow Prometheus conventions: the `tidings_` prefix, base units (seconds), `_total` for counters. Three are
fixed for dashboards and alerts: `tidings_http_requests_total`, `tidings_http_request_duration_seconds` and
`tidings_websocket_connections`.

With METRICS=0 nothing is recorded (every method is a no-op) and /metrics answers 404.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

from tidings.server.adapters.jobs import JOB_STATES, JobState

# The Prometheus text format, version 0.0.4: what every Prometheus and promtool reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. Requests: from 1 ms (a cached read) to 10 s (a request waiting on a timed-out dependency).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Delivery lag, from a notification's created_at to its write to the sockets: the alert fires past 1 s.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

LoginResult = Literal["ok", "bad_credentials", "rate_limited"]
NotificationKind = Literal["targeted", "broadcast"]
SenderType = Literal["user", "key"]
ReplayKind = Literal["resume", "catch_up"]
Dependency = Literal["mongodb", "redis"]
# How multiprocess mode combines a gauge over the workers ("live": only the workers still running).
GaugeMode = Literal["livesum", "livemin", "livemax"]


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_ENV) or None


def prepare_multiprocess_dir(path: str) -> None:
    """Empty the directory before any worker starts: files left by an earlier run would add their counts to this
    one's (prometheus-client's documented requirement)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def mark_process_dead(pid: int) -> None:
    """A worker exited: its live gauges (open sockets) stop counting; its counters stay in the sums."""
    if multiprocess_dir() is not None:
        prometheus_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class Metrics:
    """Every metric tidings exports. Call sites pass label values from closed sets, never user input."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        self._multiprocess = multiprocess_dir() is not None
        registry = self.registry

        def counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, documentation, labels, registry=registry)

        def gauge(name: str, documentation: str, labels: tuple[str, ...] = (), *, mode: GaugeMode = "livesum") -> Gauge:
            return Gauge(name, documentation, labels, registry=registry, multiprocess_mode=mode)

        self.http_requests = counter(
            "tidings_http_requests", "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
        )  # fmt: skip
        self.http_duration = Histogram(
            "tidings_http_request_duration_seconds",
            "Time to answer an HTTP request (WebSocket upgrades excluded), by method and route template.",
            ("method", "route"),
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.websocket_connections = gauge("tidings_websocket_connections", "Open WebSockets.")
        self.websocket_closes = counter("tidings_websocket_closes", "WebSockets closed, by close code.", ("code",))
        self.slow_client_closes = counter(
            "tidings_websocket_slow_client_closes", "WebSockets closed because their client read too slowly."
        )
        self.notifications_sent = counter(
            "tidings_notifications_sent",
            "Notifications sent, by kind (targeted or broadcast) and sender (a user or an API key).",
            ("kind", "sender"),
        )
        self.deliveries = counter("tidings_deliveries", "Notification frames written to WebSockets.")
        self.delivery_lag = Histogram(
            "tidings_delivery_lag_seconds",
            "From a notification's created_at to its live write to this process's sockets.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.replays = counter(
            "tidings_replays", "Replays from the database: a client's resume, or a catch-up after a broker outage.",
            ("kind",),
        )  # fmt: skip
        self.broker_up = gauge(
            "tidings_broker_subscription_up",
            "1 while the broker's subscription (Redis pub/sub) is live.",
            mode="livemin",
        )
        self.broker_reconnects = counter("tidings_broker_reconnects", "Broker subscriptions re-established.")
        self.login_attempts = counter("tidings_login_attempts", "Login attempts, by result.", ("result",))
        self.jobs = gauge("tidings_jobs", "Background jobs, by state (sampled).", ("state",), mode="livemax")
        self.job_failures = counter("tidings_job_failures", "Background job runs that failed, by job.", ("job",))
        self.ready = gauge("tidings_ready", "1 while every dependency answers (as /health/ready).", mode="livemin")
        self.dependency_up = gauge(
            "tidings_dependency_up",
            "1 while the dependency answers its probe (sampled).",
            ("dependency",),
            mode="livemin",
        )
        # Children that must show before their first event (a dashboard or an alert reads them from the start).
        for state in JOB_STATES:
            self.jobs.labels(state)
        for result in ("ok", "bad_credentials", "rate_limited"):
            self.login_attempts.labels(result)
        for kind in ("targeted", "broadcast"):
            for sender in ("user", "key"):
                self.notifications_sent.labels(kind, sender)
        for kind in ("resume", "catch_up"):
            self.replays.labels(kind)
        # The hot path's children, found once per (method, route) instead of per request.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    # Recording

    def observe_request(self, method: str, route: str, status: int, seconds: float | None) -> None:
        """One answered request; `seconds` None for a WebSocket (its "duration" is the socket's life)."""
        if not self.enabled:
            return
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(method, route, str(status)),
                self.http_duration.labels(method, route),
            )
            if len(self._request_children) < 10_000:  # routes are templates; this bounds even a misuse
                self._request_children[key] = children
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def socket_opened(self) -> None:
        if self.enabled:
            self.websocket_connections.inc()

    def socket_closed(self, code: int) -> None:
        if self.enabled:
            self.websocket_connections.dec()
            self.websocket_closes.labels(str(code)).inc()

    def slow_client_closed(self) -> None:
        if self.enabled:
            self.slow_client_closes.inc()

    def delivered(self, frames: int) -> None:
        if self.enabled:
            self.deliveries.inc(frames)

    def delivery_lagged(self, seconds: float) -> None:
        if self.enabled:
            self.delivery_lag.observe(max(seconds, 0.0))

    def replayed(self, kind: ReplayKind) -> None:
        if self.enabled:
            self.replays.labels(kind).inc()

    def count_sent(self, kind: NotificationKind, sender: SenderType, count: int = 1) -> None:
        if self.enabled and count:
            self.notifications_sent.labels(kind, sender).inc(count)

    def broker_connected(self, *, reconnect: bool) -> None:
        if self.enabled:
            self.broker_up.set(1)
            if reconnect:
                self.broker_reconnects.inc()

    def broker_disconnected(self) -> None:
        if self.enabled:
            self.broker_up.set(0)

    def login(self, result: LoginResult) -> None:
        if self.enabled:
            self.login_attempts.labels(result).inc()

    def job_failed(self, name: str) -> None:
        if self.enabled:
            self.job_failures.labels(name).inc()

    def sampled(self, dependencies: Mapping[Dependency, bool], jobs: Mapping[JobState, int] | None) -> None:
        """What the periodic probe found (server/services/readiness.py)."""
        if not self.enabled:
            return
        for name, up in dependencies.items():
            self.dependency_up.labels(name).set(1 if up else 0)
        self.ready.set(1 if all(dependencies.values()) else 0)
        for state, count in (jobs or {}).items():
            self.jobs.labels(state).set(count)

    # Exposition

    def exposition(self) -> bytes:
        """The text format: this process's registry, or with multiprocess mode every worker's files summed.

        Reads files in multiprocess mode, so the handler runs it in a thread."""
        if not self._multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
