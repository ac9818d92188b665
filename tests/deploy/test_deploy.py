"""The deployment material: compose validation, the local runner's plan, the README table."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy import config_table
from deploy.local.run import plan_from_env, processes
from deploy.validate_compose import semantic_errors

ROOT = Path(__file__).resolve().parents[2]


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.validate_compose", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_compose_file_is_valid() -> None:
    result = _validate(ROOT / "compose.yaml")
    assert result.returncode == 0, result.stderr


def test_compose_runs_every_app_and_worker_with_healthchecks() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    for name in ("gateway", "auth", "llm", "rag", "jobs", "billing"):
        assert services[name]["command"] == ["serve", name]
        assert "healthcheck" in services[name]
    for name in ("auth", "llm", "rag", "jobs", "billing"):
        assert services[f"{name}-worker"]["command"] == ["worker", name]
    assert services["postgres"]["image"].startswith("pgvector/")
    # only the gateway is reachable from outside; Prometheus (an opt-in profile) from this host
    published = {n: s["ports"] for n, s in services.items() if s.get("ports")}
    assert set(published) == {"gateway", "prometheus"}
    assert all(str(p).startswith("127.0.0.1:") for p in published["prometheus"])


def test_schema_violation_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  web:\n    image: x\n    ports: 8000\n    restart: sometimes\n")
    result = _validate(bad)
    assert result.returncode == 1


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"services": {"a": {"image": "x", "depends_on": ["b"]}}}, "unknown service 'b'"),
        ({"services": {"a": {"image": "x"}}}, "no healthcheck"),
        (
            {"services": {"a": {"image": "x", "healthcheck": {}, "volumes": ["data:/d"]}}},
            "volume 'data' is not declared",
        ),
        (
            {
                "services": {
                    "a": {"build": {"context": ".", "dockerfile": "nope"}, "healthcheck": {}}
                }
            },
            "does not exist",
        ),
        (
            {"services": {"a": {"image": "x", "healthcheck": {}, "volumes": ["./nope.yml:/c"]}}},
            "bind-mounted ./nope.yml does not exist",
        ),
    ],
)
def test_semantic_errors(doc: dict[str, object], expected: str, tmp_path: Path) -> None:
    errors = semantic_errors(doc, tmp_path)
    assert any(expected in e for e in errors), errors


def test_local_plan_runs_gateway_services_and_workers() -> None:
    plan = plan_from_env({"GATEWAY_PORT": "9000", "LLM_PORT": "9002"})
    procs = processes(plan)
    services = ("auth", "llm", "rag", "jobs", "billing")
    # the gateway and the llm a process each, the other four apps in one, each on its port;
    # every service's jobs in one worker process
    assert set(procs) == {"mail", "gateway", "llm", "apps", "worker"}
    assert "gateway.app:app --host 127.0.0.1 --port 9000" in procs["gateway"]
    assert "--port 9002" in procs["llm"]
    assert procs["apps"].endswith(
        "deploy.local.apps auth=127.0.0.1:8001 rag=127.0.0.1:8003"
        " jobs=127.0.0.1:8004 billing=127.0.0.1:8005"
    )
    # or all six in one process
    one = processes(plan_from_env({"AISTACK_APPS": "one"}))
    assert set(one) == {"mail", "apps", "worker"}
    assert "deploy.local.apps gateway=127.0.0.1:8000 auth=127.0.0.1:8001 llm=" in one["apps"]
    assert "libs.worker auth llm rag jobs billing --metrics-port 10010" in procs["worker"]
    # or one each, as compose runs them
    each = processes(
        plan_from_env({"AISTACK_WORKERS": "per-service", "AISTACK_APPS": "per-service"})
    )
    assert {f"{s}-worker" for s in services} <= set(each) and "worker" not in each
    assert "libs.worker llm" in each["llm-worker"]
    assert "--port 8000" in each["gateway"] and "gateway.app:app" in each["gateway"]
    assert "--port 8002" in each["llm"] and "apps" not in each
    # a configured SMTP server replaces the local mail sink
    env = {"AISTACK_WORKERS": "0", "AISTACK_APPS": "per-service", "AUTH_SMTP_HOST": "smtp"}
    assert set(processes(plan_from_env(env))) == {
        "gateway",
        "auth",
        "llm",
        "rag",
        "jobs",
        "billing",
    }


def test_readme_configuration_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert config_table.render_readme(readme) == readme, "run `make docs` to refresh the table"


def _interpolate(value: str) -> str:
    """Compose's ${VAR:?err} / ${VAR:-default}, with a strong stand-in for required values."""

    def one(m: re.Match[str]) -> str:
        return "s3cret-" + "x" * 40 if m.group(2) == "?" else m.group(3)

    return re.sub(r"\$\{(\w+):([?-])([^}]*)\}", one, value)


@pytest.mark.parametrize("service", ["gateway", "auth", "llm", "rag", "jobs", "billing"])
def test_compose_environment_starts_each_app_in_production(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every secret production refuses by default is set by compose (else the app would exit)."""
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    env = {k: _interpolate(str(v)) for k, v in doc["services"][service]["environment"].items()}
    assert env["ENVIRONMENT"] == "production"
    for key in list(os.environ):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    module, cls_name = next((m, c) for app, m, c in config_table.APPS if app == service)
    settings = getattr(importlib.import_module(module), cls_name)()
    assert settings.environment == "production"
    assert settings.database_url.startswith("postgresql+asyncpg://aistack:")
