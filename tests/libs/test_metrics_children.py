"""libs.telemetry's metrics keep their labelled children: what a scrape shows stays right."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from libs.telemetry import Counter, Gauge, Histogram


def _scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_a_label_set_is_one_child_and_counts_show() -> None:
    registry = CollectorRegistry()
    requests = Counter("t_requests_total", "x", ["route", "status"], registry=registry)
    assert requests.labels("/a", 200) is requests.labels("/a", 200)
    requests.labels("/a", 200).inc()
    requests.labels("/a", 200).inc(2)
    requests.labels("/b", "404").inc()
    # keyword labels still work (and are the same series)
    requests.labels(route="/a", status="200").inc()
    text = _scrape(registry)
    assert 't_requests_total{route="/a",status="200"} 4.0' in text
    assert 't_requests_total{route="/b",status="404"} 1.0' in text


def test_removed_and_cleared_series_come_back_when_counted_again() -> None:
    registry = CollectorRegistry()
    state = Gauge("t_state", "x", ["provider"], registry=registry)
    latency = Histogram("t_latency_seconds", "x", ["provider"], buckets=(1,), registry=registry)
    state.labels("openai").set(2)
    state.remove("openai")
    assert 't_state{provider="openai"}' not in _scrape(registry)
    # a kept child of a removed series would take the value and never show it
    state.labels("openai").set(1)
    assert 't_state{provider="openai"} 1.0' in _scrape(registry)

    latency.labels("openai").observe(0.5)
    latency.clear()
    latency.labels("openai").observe(0.5)
    assert 't_latency_seconds_count{provider="openai"} 1.0' in _scrape(registry)
