"""``make run``: the whole stack on one machine, under one process manager.

When ``DATABASE_URL`` / ``REDIS_URL`` are not set, an embedded PostgreSQL (with pgvector) and
an embedded Redis start from Python packages, keeping their data under ``AISTACK_DATA_DIR``
(default ``.data/local``) so the next start finds it again. Then every service's migrations
are applied and the gateway, the five services and their workers run under
:class:`deploy.local.supervisor.Supervisor`, each log line prefixed by the process name.

The gateway and the llm, on every request's path, run a uvicorn process each; auth, rag,
jobs and billing share one process (``python -m deploy.local.apps``, each app on its port with
its own server and lifespan), which keeps their common libraries once (~80 MiB an app less at
idle). ``AISTACK_APPS=one`` puts all six in one process (the least memory, one core for all),
``per-service`` runs a process each, as compose does.

Every service's jobs run in one worker process (``python -m libs.worker auth llm rag jobs
billing``: each service on its own queue, with its own settings and resources), which saves
the memory of four interpreters; ``AISTACK_WORKERS=per-service`` runs one per service, as
compose does, and ``0`` none.

Every app and the worker serve their Prometheus metrics on a port of their own (the app's port
+ 1000: gateway 9000, auth 9001 … billing 9005; the worker 9010, or with per-service workers
their service's port + 1010, auth-worker 9011 … billing-worker 9015; ``<NAME>_METRICS_PORT``,
``AISTACK_WORKER_METRICS_PORT`` / ``<NAME>_WORKER_METRICS_PORT`` move one, ``METRICS_PORT=0``
turns them off); the ready banner lists them.

A process that exits on its own (a crash, the OOM killer, ``kill -9``) is started again after
a pause doubling from 0.5 s to 10 s while the others keep serving; the embedded PostgreSQL and
Redis are watched and restarted the same way. One that exits five times in a row without
staying up 30 s cannot start (a bad setting): the runner then stops everything and exits 1.
Ctrl-C or SIGTERM stops everything, databases included, and exits 0: a stop that was asked for
is not a failure (``make run`` then ends quietly instead of with ``Error 130``).

The supervisor is a small loop over honcho's pieces (its ``Process`` and ``Printer``) rather
than honcho's ``Manager``, which stops the whole stack when one process exits, or another
library (supervisor, circus): the reasons are in its module docstring.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy.local.supervisor import Supervisor
from libs.embedded import EmbeddedPostgres, EmbeddedRedis, port_open
from libs.registry import GATEWAY_PORT, SERVICES
from libs.settings import METRICS_PORT_OFFSET, WORKER_METRICS_PORT_OFFSET

ROOT = Path(__file__).resolve().parents[2]
# the apps every API request goes through: a process (a core) each unless AISTACK_APPS=one
HOT_APPS = frozenset({"gateway", "llm"})


@dataclass(frozen=True)
class Plan:
    """Where every process listens and where the data lives."""

    host: str
    gateway_port: int
    ports: dict[str, int]
    data_dir: Path
    pg_port: int
    redis_port: int
    # "one": every service's jobs in one worker process; "per-service": one each, as compose
    # runs them; "none"
    workers: str
    # "grouped": the gateway and the llm (every request's path) a process each, auth, rag,
    # jobs and billing in one (deploy/local/apps.py), each app on its port; "one": all six
    # in one process; "per-service": a uvicorn process each, as compose runs them
    apps: str
    # a local SMTP server printing mails, unless a real one is configured
    mail_port: int | None
    # process name → the port of its metrics listener (processes without one are absent)
    metrics: dict[str, int]

    def metrics_env(self) -> dict[str, str]:
        """The settings that give every app and worker the host and metrics port planned here
        (each process reads its own prefix: GATEWAY_METRICS_PORT, LLM_WORKER_METRICS_PORT)."""
        env: dict[str, str] = {}
        for name in ("gateway", *self.ports):
            prefix = name.upper()
            env[f"{prefix}_HOST"] = self.host
            env[f"{prefix}_METRICS_PORT"] = str(self.metrics.get(name, 0))
            if name != "gateway":
                env[f"{prefix}_WORKER_METRICS_PORT"] = str(self.metrics.get(f"{name}-worker", 0))
        env["AISTACK_WORKER_METRICS_PORT"] = str(self.metrics.get("worker", 0))
        return env


def _metrics_port(env: dict[str, str], name: str, worker: bool, port: int) -> int:
    # one process's own setting, else the shared one only to turn them all off (one port
    # shared by every process suits containers, not one host), else the process's port + offset
    own = env.get(
        f"{name.upper()}_WORKER_METRICS_PORT" if worker else f"{name.upper()}_METRICS_PORT"
    )
    if own is not None:
        return int(own.strip() or 0)
    shared = env.get("WORKER_METRICS_PORT" if worker else "METRICS_PORT")
    if shared is not None and shared.strip() in ("", "0"):
        return 0
    return port + (WORKER_METRICS_PORT_OFFSET if worker else METRICS_PORT_OFFSET)


def _workers_mode(value: str) -> str:
    value = value.strip().lower()
    if value in ("0", "false", "no", "none", ""):
        return "none"
    return "per-service" if value in ("per-service", "each") else "one"


def _apps_mode(value: str) -> str:
    value = value.strip().lower()
    if value in ("per-service", "each"):
        return "per-service"
    return "one" if value == "one" else "grouped"


def plan_from_env(env: dict[str, str]) -> Plan:
    """Read the runner's configuration from the environment (see the README's table)."""
    gateway_port = int(env.get("GATEWAY_PORT", str(GATEWAY_PORT)))
    ports = {n: int(env.get(f"{n.upper()}_PORT", str(s.port))) for n, s in SERVICES.items()}
    workers = _workers_mode(env.get("AISTACK_WORKERS", "1"))
    metrics = {"gateway": _metrics_port(env, "gateway", False, gateway_port)}
    for name, port in ports.items():
        metrics[name] = _metrics_port(env, name, False, port)
        if workers == "per-service":
            metrics[f"{name}-worker"] = _metrics_port(env, name, True, port)
    if workers == "one":
        # one process: the gateway's port + 1010 (9010), beside the per-service ones
        metrics["worker"] = _metrics_port(env, "aistack", True, gateway_port)
    return Plan(
        host=env.get("AISTACK_HOST", "127.0.0.1"),
        gateway_port=gateway_port,
        ports=ports,
        data_dir=Path(env.get("AISTACK_DATA_DIR", str(ROOT / ".data" / "local"))),
        pg_port=int(env.get("AISTACK_EMBEDDED_PG_PORT", "54329")),
        redis_port=int(env.get("AISTACK_EMBEDDED_REDIS_PORT", "63799")),
        workers=workers,
        apps=_apps_mode(env.get("AISTACK_APPS", "grouped")),
        mail_port=None if env.get("AUTH_SMTP_HOST") else int(env.get("AISTACK_MAIL_PORT", "1025")),
        metrics={name: port for name, port in metrics.items() if port},
    )


def processes(plan: Plan) -> dict[str, str]:
    """Process name → command line (the Procfile of the local stack)."""
    # exec: honcho runs each line through a shell; let the process replace it
    py = f"exec {sys.executable}"
    uv = (
        f"{py} -m uvicorn --factory --no-access-log --no-proxy-headers"
        " --timeout-graceful-shutdown 5 --http libs.server:HttpProtocol"
    )
    apps = {"gateway": plan.gateway_port, **plan.ports}
    # apps sharing one process keep their common libraries once (~80 MiB an app at idle,
    # docs/benchmarks.md); those on every request's path keep a process (a core) of their own
    alone = (
        set(apps) if plan.apps == "per-service" else HOT_APPS if plan.apps == "grouped" else set()
    )
    procs = {}
    for name, port in apps.items():
        if name in alone:
            app = "gateway.app:app" if name == "gateway" else SERVICES[name].app
            procs[name] = f"{uv} {app} --host {plan.host} --port {port}"
    shared = [f"{name}={plan.host}:{port}" for name, port in apps.items() if name not in alone]
    if shared:
        procs["apps"] = f"{py} -m deploy.local.apps {' '.join(shared)}"
    if plan.workers == "per-service":
        for name in plan.ports:
            procs[f"{name}-worker"] = f"{py} -m libs.worker {name}"
    elif plan.workers == "one":
        # every service's jobs in one process (each on its own queue): about 80 MiB each of
        # four more processes saved (docs/benchmarks.md)
        services = " ".join(plan.ports)
        port = plan.metrics.get("worker", 0)
        procs["worker"] = f"{py} -m libs.worker {services} --metrics-port {port}"
    if plan.mail_port is not None and importlib.util.find_spec("aiosmtpd") is not None:
        procs["mail"] = f"{py} -m deploy.local.mailsink --host {plan.host} --port {plan.mail_port}"
    return procs


def _busy_ports(plan: Plan) -> list[int]:
    wanted = [plan.gateway_port, *plan.ports.values(), *plan.metrics.values()]
    if plan.mail_port is not None:
        wanted.append(plan.mail_port)
    return [p for p in wanted if port_open(plan.host, p)]


def banner(plan: Plan, url: str, took: float) -> str:
    """What the runner prints once the gateway reports every service ready."""
    lines = [
        f"  aistack is ready in {took:.1f}s",
        f"    API      {url}",
        f"    Docs     {url}/docs",
        f"    Ready    {url}/ready",
    ]
    if plan.metrics:
        # for Prometheus (any path answers; deploy/prometheus/prometheus.yml scrapes them)
        ports = ", ".join(f"{name} {port}" for name, port in plan.metrics.items())
        lines.append(f"    Metrics  /metrics on ports: {ports}")
    lines.append("  Press Ctrl-C to stop.")
    return "\n" + "\n".join(lines) + "\n"


def _announce_when_ready(plan: Plan, url: str, started: float, stop: threading.Event) -> None:
    """Print the URLs once the gateway reports every service ready."""
    while not stop.wait(0.25):
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    print(banner(plan, url, time.monotonic() - started), flush=True)
                    return
        except (urllib.error.URLError, OSError, TimeoutError):
            continue


def main() -> int:
    started = time.monotonic()
    env = dict(os.environ)
    plan = plan_from_env(env)
    busy = _busy_ports(plan)
    if busy:
        print(
            f"aistack: ports already in use: {busy}. Stop what uses them or set *_PORT "
            "(metrics: *_METRICS_PORT, or METRICS_PORT=0 for none)."
        )
        return 1

    # until the supervisor takes over: SIGTERM stops the start-up like Ctrl-C (databases too)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    pg: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    try:
        if not env.get("DATABASE_URL"):
            print(f"aistack: embedded PostgreSQL on :{plan.pg_port} ({plan.data_dir})", flush=True)
            # assigned before start(): an interrupted start is still stopped below
            pg = EmbeddedPostgres(plan.data_dir / "postgres", port=plan.pg_port)
            pg.start()
            env["DATABASE_URL"] = pg.url
        if not env.get("REDIS_URL"):
            print(f"aistack: embedded Redis on :{plan.redis_port}", flush=True)
            redis = EmbeddedRedis(plan.data_dir / "redis", port=plan.redis_port)
            redis.start()
            env["REDIS_URL"] = redis.url

        print("aistack: applying migrations", flush=True)
        # in a process of their own: alembic and every service's models stay out of the
        # supervisor, which lives as long as the stack (103 -> 59 MiB RSS)
        migrations = subprocess.run(
            [sys.executable, "-m", "libs.migrations", "upgrade", "all"], env=env, cwd=str(ROOT)
        )
        if migrations.returncode != 0:
            print("aistack: the migrations failed (their error is above)", flush=True)
            return 1

        for name, port in plan.ports.items():
            env.setdefault(f"GATEWAY_{name.upper()}_URL", f"http://{plan.host}:{port}")
            # the jobs service and the worker call auth, llm and rag
            env.setdefault(f"JOBS_{name.upper()}_URL", f"http://{plan.host}:{port}")
        if plan.mail_port is not None:
            env["AUTH_SMTP_HOST"] = plan.host
            env["AUTH_SMTP_PORT"] = str(plan.mail_port)
        env.setdefault("LOG_JSON", "false")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(plan.metrics_env())

        supervisor = Supervisor()
        for name, cmd in processes(plan).items():
            supervisor.add_process(name, cmd, env=env, cwd=str(ROOT))
        if pg:
            supervisor.watch("postgres", pg.running, pg.start)
        if redis and redis.proc:  # not one that was already answering on the port
            supervisor.watch("redis", redis.running, redis.start)
        stop = threading.Event()
        shown_host = "localhost" if plan.host in ("127.0.0.1", "0.0.0.0") else plan.host
        url = f"http://{shown_host}:{plan.gateway_port}"
        threading.Thread(
            target=_announce_when_ready, args=(plan, url, started, stop), daemon=True
        ).start()
        code = supervisor.run()
        stop.set()
        if supervisor.gave_up:
            print(f"aistack: stopped: {supervisor.gave_up} (its last lines are above)", flush=True)
            return code or 1
        # Ctrl-C or SIGTERM: the stop that was asked for happened, so it is a success (the
        # supervisor's 130 / 143 would make `make run` end with "Error 130")
        return 0
    except KeyboardInterrupt:
        # Ctrl-C (or SIGTERM) during the start-up: stopped as asked, databases included below
        print("aistack: start-up interrupted; stopping", flush=True)
        return 0
    finally:
        # a second Ctrl-C must not leave the databases running
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if redis:
            redis.stop()
        if pg:
            print("aistack: stopping embedded PostgreSQL", flush=True)
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
