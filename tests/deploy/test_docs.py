"""The README's route table, the release documents and the version say what the code does."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

from gateway.routes import ROUTES, match_route
from libs.app import VERSION

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _route_table() -> dict[str, list[tuple[str, bool]]]:
    """service → (prefix, reserved) for each prefix the README's table names."""
    rows: dict[str, list[tuple[str, bool]]] = {}
    table = README.split("| Prefix | Service |", 1)[1].split("\n\n", 1)[0]
    for line in table.splitlines()[2:]:
        cells, service = line.strip("|").rsplit("|", 1)
        for part in re.finditer(r"`([^`]+)`([^`]*)", cells):
            reserved = "reserved" in part.group(2)
            rows.setdefault(service.strip(), []).append((part.group(1), reserved))
    return rows


@pytest.fixture(scope="module")
def served() -> dict[str, list[str]]:
    """The public paths each service's app publishes."""
    out = {}
    for service in ("auth", "llm", "rag", "jobs", "billing"):
        app = importlib.import_module(f"services.{service}.app").build_app()
        out[service] = list(app.openapi()["paths"])
    return out


def test_the_readme_route_table_matches_the_gateway_and_the_services(
    served: dict[str, list[str]],
) -> None:
    table = _route_table()
    assert set(table) == {"auth", "llm", "rag", "jobs", "billing"}
    listed = set()
    for service, prefixes in table.items():
        for prefix, reserved in prefixes:
            route = match_route(prefix)
            assert route is not None and route.service == service, prefix
            listed.add(route.prefix)
            exists = any(p == prefix or p.startswith(prefix + "/") for p in served[service])
            # a prefix the README lists is served; one it calls reserved is not (yet)
            assert exists != reserved, (prefix, "served" if exists else "not served")
    # every gateway route that leads somewhere is in the table
    for route in ROUTES:
        if any(
            p == route.prefix or p.startswith(route.prefix + "/") for p in served[route.service]
        ):
            assert route.prefix in listed, route.prefix


def test_the_release_documents_exist_and_the_readme_links_them() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "keepachangelog.com" in changelog
    assert re.search(r"^## \[Unreleased\]$", changelog, re.M)
    sections = re.findall(r"^### (\w+)$", changelog.split("## [Unreleased]", 1)[1], re.M)
    known = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    assert sections and set(sections) <= known, sections
    stability = (ROOT / "docs" / "api-stability.md").read_text()
    for needed in ("Deprecation", "Sunset", "breaking", "180 days"):
        assert needed in stability, needed
    assert "(docs/api-stability.md)" in README and "(CHANGELOG.md)" in README


def test_the_version_comes_from_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == VERSION
