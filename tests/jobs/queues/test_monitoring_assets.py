"""The job platform's alert rules and Grafana dashboard: promtool checks the rules and runs
their unit tests; the dashboard has the structure Grafana imports, every query parses as PromQL
and every metric it (or a rule) reads is one aistack exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

import libs.queue.metrics
import libs.telemetry  # noqa: F401 - registers the shared metrics
import services.jobs.queues.metrics  # noqa: F401 - registers the queue gauges
from tests.support import promtool

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "jobs.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "jobs.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "jobs.json"
METRIC = re.compile(r"\baistack_[a-z0-9_]+\b")


def exported_metrics() -> set[str]:
    """Every series name aistack's processes can export (counters' _total, histograms'
    _bucket, _sum, _count)."""
    from prometheus_client import REGISTRY

    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = promtool.run("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool.run("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    doc = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in doc["groups"] for r in g["rules"]]
    unknown = {m for e in exprs for m in METRIC.findall(e)} - exported_metrics()
    assert not unknown, unknown
    # Prometheus loads them (the path compose mounts them at)
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert "/etc/prometheus/rules/jobs.yml" in config["rule_files"]


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in dashboard["panels"] for t in p.get("targets", [])]


def test_the_grafana_dashboard_is_importable_and_reads_existing_metrics(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "aistack-jobs" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "queue"} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 8
    for p in dashboard["panels"]:
        assert p["type"] in ("timeseries", "stat", "gauge", "table", "bargauge"), p
        grid = p["gridPos"]
        assert (
            {"h", "w", "x", "y"} <= set(grid)
            and 0 < grid["w"] <= 24
            and grid["x"] + grid["w"] <= 24
        )
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
    # panels do not overlap
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        cells |= mine

    exprs = [t["expr"] for t in _targets(dashboard)]
    unknown = {m for e in exprs for m in METRIC.findall(e)} - exported_metrics()
    assert not unknown, unknown
    # every query parses: promtool checks them as recording rules (Grafana's variables given
    # values first)
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {
                        "record": f"dashboard:query_{i}",
                        "expr": e.replace("$__rate_interval", "5m").replace("$queue", ".*"),
                    }
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool.run("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
