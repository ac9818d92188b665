"""The container image (deploy/Dockerfile): a pinned base, and exactly the lock file's versions.

There is no Docker engine here, so the image's install is checked the way the Dockerfile
does it: its own ``uv sync`` commands, read from the file, run with its build stage's
environment into a temporary virtualenv (uv's cache makes that a matter of seconds), and what
they installed is compared with ``uv export --frozen --no-dev``, package by package.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# an exact release in the tag (python:3.11.17-slim-bookworm), or a digest
_PINNED = re.compile(r"^[\w./-]+(:[\w.-]*\d+\.\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _uv() -> str:
    return os.environ.get("UV") or shutil.which("uv") or "uv"


def test_every_from_is_pinned_to_an_exact_version() -> None:
    bases = [
        args.split()[0] for word, args in instructions(DOCKERFILE.read_text()) if word == "FROM"
    ]
    assert len(bases) == 2  # build and runtime
    for image in bases:
        tagged = ":" in image.split("/")[-1] or "@sha256:" in image
        assert tagged and _PINNED.match(image), f"{image}: pin an exact version"
        assert not image.endswith(":latest")
    # the runtime runs what the build compiled against
    assert len(set(bases)) == 1, bases


def _build_stage() -> tuple[dict[str, str], list[list[str]]]:
    """The build stage's ENV and its ``uv sync`` commands, in order."""
    env: dict[str, str] = {}
    syncs: list[list[str]] = []
    stage = 0
    for word, args in instructions(DOCKERFILE.read_text()):
        if word == "FROM":
            stage += 1
        elif stage == 1 and word == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
        elif stage == 1 and word == "RUN" and "uv sync" in args:
            tokens = shlex.split(args)
            while tokens[0].startswith("--"):  # --mount=type=cache,... (BuildKit's, not uv's)
                tokens.pop(0)
            syncs.append(tokens)
    return env, syncs


def _locked_runtime_versions() -> dict[str, str]:
    """What uv.lock says the image holds: the runtime dependencies for this platform."""
    exported = subprocess.run(
        [
            _uv(),
            "export",
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--no-emit-project",
            "--no-header",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    versions: dict[str, str] = {}
    for line in exported.splitlines():
        if not line or not line[0].isalnum():
            continue
        requirement, _, marker = line.partition(" ; ")
        if marker and not Marker(marker).evaluate():
            continue
        name, _, version = requirement.partition("==")
        name = name.split("[", 1)[0]
        versions[canonicalize_name(name)] = version.strip()
    return versions


def _sync_env(venv: Path) -> dict[str, str]:
    stage_env, _ = _build_stage()
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
    }
    env.update(stage_env)
    # where the image has /opt/venv; bytecode and copying change how, not what, is installed.
    # Offline: what `make sync` put in uv's cache, without revalidating it (a revalidation
    # that finds the llama-cpp-python sdist "changed" starts a rebuild of several minutes)
    env.update(
        {
            "UV_PROJECT_ENVIRONMENT": str(venv),
            "UV_COMPILE_BYTECODE": "0",
            "UV_LINK_MODE": "hardlink",
            "UV_OFFLINE": "1",
        }
    )
    return env


def _planned(command: list[str], env: dict[str, str]) -> tuple[dict[str, str], bool]:
    """What ``command`` would install into an empty environment, and whether that needs a
    download or a build first (uv's ``--dry-run``: nothing is installed or built)."""
    done = subprocess.run(
        [_uv(), *command[1:], "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    out = done.stdout + done.stderr
    plan: dict[str, str] = {}
    for line in out.splitlines():
        match = re.match(r"^ \+ ([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if match:
            plan[canonicalize_name(match.group(1).split("[", 1)[0])] = match.group(2)
    return plan, bool(re.search(r"^Would (download|build)", out, re.M))


def _check(installed: dict[str, str]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert installed.pop("aistack") == project["version"]
    expected = _locked_runtime_versions()
    assert installed == expected, {
        "installed, not locked": {n: v for n, v in installed.items() if expected.get(n) != v},
        "locked, not installed": {n: v for n, v in expected.items() if installed.get(n) != v},
    }
    # no development tool in the image
    assert not {"pytest", "mypy", "ruff"} & set(installed)


def test_the_images_uv_sync_installs_exactly_the_locked_versions(tmp_path: Path) -> None:
    _, syncs = _build_stage()
    assert syncs, "no `uv sync` in the Dockerfile's build stage"
    for command in syncs:
        assert command[:2] == ["uv", "sync"] and "--frozen" in command and "--no-dev" in command
    venv = tmp_path / "venv"
    env = _sync_env(venv)
    # the last sync is the whole install (the first one is its dependency layer)
    plan, needs_fetching = _planned(syncs[-1], env)
    _check(dict(plan))
    if needs_fetching:
        # uv's cache lacks a wheel the install needs (being rebuilt by another sync, say):
        # the plan above is what it would install; building it here would take minutes
        return
    for command in syncs:
        done = subprocess.run(
            [_uv(), *command[1:]],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=240,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    listed = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, json;"
            "print(json.dumps([[d.metadata['Name'], d.version] for d in m.distributions()]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    installed: dict[str, str] = {canonicalize_name(n): v for n, v in json.loads(listed.stdout)}
    _check(installed)
