"""server/adapters/metrics.py: what each recording method counts, METRICS=0, and the multiprocess directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tidings.server.adapters.metrics import Metrics, prepare_multiprocess_dir

pytestmark = pytest.mark.unit


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_requests_are_counted_per_route_with_their_duration() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.observe_request("GET", "/api/v1/users/{user_id}", 200, 0.004)
    metrics.observe_request("GET", "/api/v1/ws", 101, None)
    route = {"method": "GET", "route": "/api/v1/users/{user_id}"}
    assert sample(metrics, "tidings_http_requests_total", status="200", **route) == 3
    assert sample(metrics, "tidings_http_request_duration_seconds_count", **route) == 3
    assert sample(metrics, "tidings_http_request_duration_seconds_bucket", le="0.005", **route) == 3
    assert sample(metrics, "tidings_http_request_duration_seconds_bucket", le="0.0025", **route) == 0
    assert sample(metrics, "tidings_http_requests_total", method="GET", route="/api/v1/ws", status="101") == 1
    assert not sample(metrics, "tidings_http_request_duration_seconds_count", method="GET", route="/api/v1/ws")


def test_sockets_and_their_closes() -> None:
    metrics = Metrics()
    metrics.socket_opened()
    metrics.socket_opened()
    metrics.socket_closed(1001)
    metrics.slow_client_closed()
    assert sample(metrics, "tidings_websocket_connections") == 1
    assert sample(metrics, "tidings_websocket_closes_total", code="1001") == 1
    assert sample(metrics, "tidings_websocket_slow_client_closes_total") == 1


def test_broker_up_and_reconnects() -> None:
    metrics = Metrics()
    assert sample(metrics, "tidings_broker_subscription_up") == 0
    metrics.broker_connected(reconnect=False)
    assert sample(metrics, "tidings_broker_subscription_up") == 1
    metrics.broker_disconnected()
    assert sample(metrics, "tidings_broker_subscription_up") == 0
    metrics.broker_connected(reconnect=True)
    assert (sample(metrics, "tidings_broker_subscription_up"), sample(metrics, "tidings_broker_reconnects_total")) == (
        1,
        1,
    )


def test_sampled_values_and_the_children_that_show_from_the_start() -> None:
    metrics = Metrics()
    for result in ("ok", "bad_credentials", "rate_limited"):
        assert sample(metrics, "tidings_login_attempts_total", result=result) == 0
    assert sample(metrics, "tidings_jobs", state="dead") == 0
    metrics.sampled({"mongodb": True, "redis": False}, {"queued": 2, "running": 0, "retrying": 1, "dead": 4})
    assert sample(metrics, "tidings_ready") == 0
    assert sample(metrics, "tidings_dependency_up", dependency="mongodb") == 1
    assert sample(metrics, "tidings_dependency_up", dependency="redis") == 0
    assert sample(metrics, "tidings_jobs", state="dead") == 4
    metrics.sampled({"mongodb": True}, None)  # no Redis at all: ready, and job counts unchanged
    assert sample(metrics, "tidings_ready") == 1


def test_disabled_records_nothing() -> None:
    metrics = Metrics(enabled=False)
    metrics.observe_request("GET", "/", 200, 0.1)
    metrics.socket_opened()
    metrics.count_sent("broadcast", "key")
    metrics.login("ok")
    metrics.delivery_lagged(1.0)
    assert sample(metrics, "tidings_websocket_connections") == 0
    assert sample(metrics, "tidings_notifications_sent_total", kind="broadcast", sender="key") == 0
    assert sample(metrics, "tidings_login_attempts_total", result="ok") == 0
    assert sample(metrics, "tidings_delivery_lag_seconds_count") == 0


def test_the_exposition_parses_and_lags_are_never_negative() -> None:
    metrics = Metrics()
    metrics.delivery_lagged(-0.5)  # a sender's clock ahead of this one
    assert sample(metrics, "tidings_delivery_lag_seconds_bucket", le="0.001") == 1
    families = {family.name for family in text_string_to_metric_families(metrics.exposition().decode())}
    assert {
        "tidings_http_requests",
        "tidings_http_request_duration_seconds",
        "tidings_websocket_connections",
    } <= families


def test_the_multiprocess_directory_is_emptied_of_earlier_runs(tmp_path: Path) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("not ours")
    prepare_multiprocess_dir(str(tmp_path / "sub"))
    assert os.path.isdir(tmp_path / "sub")
    prepare_multiprocess_dir(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["keep.txt", "sub"]
