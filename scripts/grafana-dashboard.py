"""Write deploy/grafana/tidings.json, the Grafana dashboard over tidings' metrics (docs/operations.md).

The JSON is generated so that its 17 panels stay uniform and short to review here; run
`python scripts/grafana-dashboard.py` after changing a panel, and commit both. tests/test_metrics.py checks that
every metric the dashboard reads is one the app exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "tidings.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24
SERVER_ERRORS = 'status=~"5.."'


def query(expr: str, legend: str) -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend, "datasource": DATASOURCE}


def p(quantile: float, bucket: str, by: str = "") -> str:
    group = f"{by}, le" if by else "le"
    return (
        f'histogram_quantile({quantile}, sum by ({group}) (rate({bucket}{{instance=~"$instance"}}[$__rate_interval])))'
    )


def rate(metric: str, by: str, where: str = "") -> str:
    selector = f'instance=~"$instance"{", " + where if where else ""}'
    return f"sum by ({by}) (rate({metric}{{{selector}}}[$__rate_interval]))"


# (title, unit, kind, queries, description); a row header is ("# Title",).
PANELS: list[tuple[Any, ...]] = [
    ("# Traffic",),
    ("Requests by status", "reqps", "timeseries",
     [query(rate("tidings_http_requests_total", "status"), "{{status}}")],
     "Every HTTP request answered, WebSocket upgrades included (counted when the socket ends)."),
    ("5xx ratio", "percentunit", "timeseries",
     [query(rate("tidings_http_requests_total", "instance", SERVER_ERRORS) + " / "
            + rate("tidings_http_requests_total", "instance"), "{{instance}}")],
     "tidings' own failures. The TidingsHighErrorRate alert fires above 5% for 5 minutes."),
    ("Request latency", "s", "timeseries",
     [query(p(0.5, "tidings_http_request_duration_seconds_bucket"), "p50"),
      query(p(0.99, "tidings_http_request_duration_seconds_bucket"), "p99")],
     "From the first middleware to the answer, WebSockets excluded."),
    ("Busiest routes", "reqps", "timeseries",
     [query(f'topk(8, {rate("tidings_http_requests_total", "method, route")})', "{{method}} {{route}}")],
     "Route templates, never raw paths: /api/v1/users/{user_id} is one route."),
    ("p99 latency by route", "s", "timeseries",
     [query(f'topk(8, {p(0.99, "tidings_http_request_duration_seconds_bucket", "method, route")})',
            "{{method}} {{route}}")],
     "Which route is slow when the latency above rises."),
    ("# Real time",),
    ("Open WebSockets", "short", "timeseries",
     [query('sum by (instance) (tidings_websocket_connections{instance=~"$instance"})', "{{instance}}")],
     "Sockets open now, authenticated or not, summed over the workers of each instance."),
    ("WebSocket closes by code", "short", "timeseries",
     [query(rate("tidings_websocket_closes_total", "code"), "{{code}}")],
     "1000/1001 are normal; 1006 lost connections; 4xxx are tidings' own (docs/websocket.md)."),
    ("Slow-client closes", "short", "timeseries",
     [query(rate("tidings_websocket_slow_client_closes_total", "instance"), "{{instance}}")],
     "Sockets dropped because their client read too slowly; the client resumes with nothing lost."),
    ("Notifications sent", "short", "timeseries",
     [query(rate("tidings_notifications_sent_total", "kind, sender"), "{{kind}} by {{sender}}")],
     "Stored notifications per second: one per recipient of a targeted send, one per broadcast."),
    ("Deliveries written", "short", "timeseries",
     [query(rate("tidings_deliveries_total", "instance"), "{{instance}}")],
     "Notification frames written to sockets, live and replayed."),
    ("Delivery lag", "s", "timeseries",
     [query(p(0.5, "tidings_delivery_lag_seconds_bucket"), "p50"),
      query(p(0.99, "tidings_delivery_lag_seconds_bucket"), "p99")],
     "From a notification's creation to its write to the sockets. TidingsDeliveryLagHigh fires above 1 s (p99)."),
    ("Replays", "short", "timeseries",
     [query(rate("tidings_replays_total", "kind"), "{{kind}}")],
     "Resumes by clients, and catch-ups after a broker outage: a burst after a restart is the reconnect storm."),
    ("# Health",),
    ("Broker subscription", "short", "stat",
     [query('min(tidings_broker_subscription_up{instance=~"$instance"})', "up")],
     "1 while every instance holds its Redis subscription. TidingsBrokerDown fires after 30 s at 0."),
    ("Dependencies", "short", "timeseries",
     [query('min by (dependency) (tidings_dependency_up{instance=~"$instance"})', "{{dependency}}"),
      query('min(tidings_ready{instance=~"$instance"})', "ready")],
     "What /health/ready answers, sampled every METRICS_SAMPLE_INTERVAL."),
    ("Broker reconnects", "short", "timeseries",
     [query('sum by (instance) (increase(tidings_broker_reconnects_total{instance=~"$instance"}[$__range]))',
            "{{instance}}")],
     "Subscriptions re-established after a Redis outage, over the dashboard's range."),
    ("Login attempts", "short", "timeseries",
     [query(rate("tidings_login_attempts_total", "result"), "{{result}}")],
     "rate_limited rising with bad_credentials is someone guessing (docs/security.md, Login limits)."),
    ("Background jobs", "short", "timeseries",
     [query('max by (state) (tidings_jobs{instance=~"$instance"})', "{{state}}"),
      query(rate("tidings_job_failures_total", "job"), "failed: {{job}}")],
     "Jobs by state (dead ones wait on the panel's Jobs page), and failed runs per second."),
]  # fmt: skip


def panels() -> list[dict[str, Any]]:
    built: list[dict[str, Any]] = []
    x = y = 0
    for number, spec in enumerate(PANELS, start=1):
        if len(spec) == 1:
            y += 8 if x else 0
            x = 0
            built.append({"type": "row", "title": spec[0][2:], "id": number, "collapsed": False,
                          "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}, "panels": []})  # fmt: skip
            y += 1
            continue
        title, unit, kind, targets, description = spec
        width = 12 if kind == "timeseries" else 6
        if x + width > WIDTH:
            x, y = 0, y + 8
        refs = [{**target, "refId": chr(ord("A") + index)} for index, target in enumerate(targets)]
        built.append(
            {
                "type": kind,
                "title": title,
                "description": description,
                "id": number,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
                "targets": refs,
            }
        )
        x += width
    return built


def dashboard() -> dict[str, Any]:
    return {
        "title": "tidings",
        "uid": "tidings",
        "description": "tidings: HTTP, WebSockets, delivery and dependencies (docs/operations.md).",
        "tags": ["tidings"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
                {
                    "name": "instance",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": "label_values(tidings_http_requests_total, instance)",
                    "includeAll": True,
                    "multi": True,
                    "current": {"text": "All", "value": "$__all"},
                    "allValue": ".*",
                    "refresh": 2,
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels(),
    }


if __name__ == "__main__":
    OUTPUT.write_text(json.dumps(dashboard(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUTPUT}")
