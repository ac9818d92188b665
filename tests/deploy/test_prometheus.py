"""The Prometheus scrape configuration covers every process compose runs, on its metrics port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
APPS = ("gateway", "auth", "llm", "rag", "jobs", "billing")


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return doc


def test_every_app_and_worker_of_compose_is_a_target_on_its_metrics_port() -> None:
    services = _compose()["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "aistack"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    expected = set()
    for name, svc in services.items():
        command = svc.get("command") or []
        if command[:1] == ["serve"]:
            expected.add(f"{name}:{svc['environment']['METRICS_PORT']}")
        elif command[:1] == ["worker"]:
            expected.add(f"{name}:{svc['environment']['WORKER_METRICS_PORT']}")
    assert len(expected) == 11  # six apps, five workers
    assert targets == expected


def test_prometheus_is_an_opt_in_profile_reading_the_repository_config() -> None:
    services = _compose()["services"]
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    # `docker compose up` (no profile) starts everything else, as before
    assert [n for n, s in services.items() if s.get("profiles")] == ["prometheus"]
    mounts = [v.split(":") for v in prometheus["volumes"]]
    assert ["./deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml", "ro"] in mounts
    assert ":" in prometheus["image"] and not prometheus["image"].endswith(":latest")
    # metrics ports are never published: only reachable on the compose network
    for name in APPS:
        assert not any("9100" in str(p) for p in services[name].get("ports", []))
