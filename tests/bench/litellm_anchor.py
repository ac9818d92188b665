"""LiteLLM's proxy measured exactly as ``llm_bench`` measures aistack, on the same machine.

The machine's speed varies between sessions, so absolute requests/s are not comparable across
days; LiteLLM measured right next to aistack is. Same fake OpenAI upstream
(:mod:`tests.bench.fake_openai`), same body, same closed-loop load generator and CPU probes,
same table.

LiteLLM is not a project dependency: it lives in its own virtualenv (default
``.bench/litellm-venv``, gitignored) and runs as a subprocess. Its proxy runs as the issue's
reference did: one worker, a master key, no database; per-request logging, telemetry and every
start-up fetch from the internet (cost map, beta headers, blog posts) turned off.

    python -m tests.bench.litellm_anchor --install     # create the virtualenv (once)
    python -m tests.bench.litellm_anchor [--duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import psutil

from libs.embedded import free_port
from libs.testing import Infra
from tests.bench import llm_bench
from tests.bench.stack import ROOT, Proc, Stack

DEFAULT_VENV = ROOT / ".bench" / "litellm-venv"
# the version issue 4's reference figures were taken with
REQUIREMENT = "litellm[proxy]==1.100.*"
MASTER_KEY = "sk-bench-master"

# uvicorn's loggers at WARNING: no access line per request (aistack's bench runs the same way)
_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "default": {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s %(message)s"}
    },
    "handlers": {
        "default": {
            "formatter": "default",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "uvicorn": {"handlers": ["default"], "level": "WARNING", "propagate": False},
        "uvicorn.error": {"level": "WARNING"},
        "uvicorn.access": {"handlers": ["default"], "level": "WARNING", "propagate": False},
    },
}

# nothing fetched from the internet at start, no debug logs, no .env read from the working folder
_LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",
    "PYTHONUNBUFFERED": "1",
}
# LiteLLM reads DATABASE_URL (and would want Prisma); the run is database-less
_DROPPED_ENV = (
    "DATABASE_URL",
    "DIRECT_URL",
    "REDIS_URL",
    "REDIS_HOST",
    "VIRTUAL_ENV",
    "PYTHONPATH",
)

INSTALL_HINT = "python -m tests.bench.litellm_anchor --install"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed(venv: Path) -> dict[str, str] | None:
    """LiteLLM's version and the HTTP implementation its uvicorn picks, or None if not installed."""
    python = venv_python(venv)
    if not python.exists():
        return None
    code = (
        "import importlib.metadata as m, importlib.util as u, json; "
        "print(json.dumps({'litellm': m.version('litellm'), "
        "'http': 'httptools' if u.find_spec('httptools') else 'h11'}))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    info: dict[str, str] = json.loads(done.stdout)
    return info


def install(venv: Path) -> None:
    """Create ``venv`` (if missing) and pip install LiteLLM's proxy into it."""
    if not venv_python(venv).exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv_python(venv)), "-m", "pip", "install", "--quiet", REQUIREMENT], check=True
    )


def _config(upstream: str, folder: Path) -> tuple[Path, Path]:
    # JSON is YAML: no PyYAML needed on this side
    config = folder / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "default",
                        "litellm_params": {
                            "model": "openai/gpt-4o-mini",
                            "api_base": f"{upstream}/v1",
                            "api_key": "sk-bench",
                        },
                    }
                ],
                "general_settings": {"master_key": MASTER_KEY},
                "litellm_settings": {"set_verbose": False, "json_logs": False},
            }
        )
    )
    log_config = folder / "uvicorn-log.json"
    log_config.write_text(json.dumps(_LOG_CONFIG))
    return config, log_config


def _start_litellm(s: Stack, venv: Path, upstream: str, folder: Path) -> Proc:
    config, log_config = _config(upstream, folder)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(_LITELLM_ENV)
    cmd = [
        str(venv_python(venv)),
        str(venv / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
        "--telemetry",
        "False",
        "--log_config",
        str(log_config),
    ]
    log_path = s.logs / "litellm.log"
    log = open(log_path, "ab")  # noqa: SIM115
    # its own folder as working directory: LiteLLM reads files (.env) from there
    popen = subprocess.Popen(cmd, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    proc = Proc("litellm", f"http://127.0.0.1:{port}", popen)
    s.procs["litellm"] = proc
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"litellm exited:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{proc.url}/health/liveliness", timeout=1):
                return proc
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.2)
    raise RuntimeError(f"litellm did not start within 180s:\n{log_path.read_text()[-3000:]}")


def _smoke(url: str) -> None:
    """One request of each kind, so a broken set-up fails loudly instead of as 100% errors."""
    headers = {"authorization": f"Bearer {MASTER_KEY}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        r = client.post("/v1/chat/completions", json=llm_bench.BODY)
        if r.status_code != 200 or not r.json().get("choices"):
            raise RuntimeError(f"litellm chat answered {r.status_code}: {r.text[:500]}")
        r = client.post("/v1/chat/completions", json={**llm_bench.BODY, "stream": True})
        if not llm_bench._stream_ok(r.status_code, r.content):
            raise RuntimeError(f"litellm stream answered {r.status_code}: {r.text[-500:]}")


def _process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def run_bench(duration: float, venv: Path = DEFAULT_VENV) -> str:
    info = installed(venv)
    if info is None:
        return f"LiteLLM is not installed in {venv}: create it with `{INSTALL_HINT}`."
    with tempfile.TemporaryDirectory(prefix="aistack-litellm-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # no PostgreSQL or Redis: an empty Infra, whose stop() does nothing
        s = Stack(Infra(database_url="", redis_url=""), env, folder)
        try:
            upstream = s.start_fake_openai()
            litellm = _start_litellm(s, venv, upstream.url, folder)
            idle = litellm.rss_mb()
            _smoke(litellm.url)
            tree = _process_tree(litellm.popen.pid)
            watched = {"litellm": tree[0], "upstream": psutil.Process(upstream.popen.pid)}
            for i, child in enumerate(tree[1:], 1):  # one worker: normally none
                watched[f"litellm child {i}"] = child
            probe = llm_bench.cpu_probe(watched)
            results = asyncio.run(llm_bench.measure(litellm.url, MASTER_KEY, duration, probe))
            memory = {"litellm": (idle, litellm.rss_mb())}
        finally:
            s.stop()
    head = (
        f"LiteLLM {info['litellm']} proxy: one uvicorn worker ({info['http']}, uvloop), "
        "master key, no database, no per-request logs\n\n"
    )
    return head + llm_bench.report(results, memory)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.litellm_anchor")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument(
        "--litellm-venv", type=Path, default=DEFAULT_VENV, help="virtualenv holding LiteLLM"
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help=f"create the virtualenv with {REQUIREMENT}, then exit",
    )
    args = parser.parse_args()
    venv = args.litellm_venv.resolve()
    if args.install:
        install(venv)
        print(f"installed: {installed(venv)} in {venv}")
        return
    print(run_bench(args.duration, venv))


if __name__ == "__main__":
    main()
