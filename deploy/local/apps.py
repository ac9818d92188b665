"""Several apps in one process, each on its own port: ``make run``'s default.

    python -m deploy.local.apps gateway=127.0.0.1:8000 auth=127.0.0.1:8001 ...

Six interpreters each importing FastAPI, pydantic, SQLAlchemy, Redis and OpenTelemetry idle at
~100 MiB apiece, ~90 of it the same libraries; one process holding the six apps keeps them
once (docs/benchmarks.md, "Jobs: … idle RSS"). Each app keeps its own uvicorn server, port,
lifespan (database and Redis pools, metrics listener) and settings, as under ``uvicorn
--factory`` in compose; they share one event loop, so one core: right for a development stack,
not for load (``AISTACK_APPS=per-service`` runs one process each, as compose does). Log lines
name their app (``[llm]``), and Prometheus's registry is the process's: each metrics port shows
every app's series (labelled by service).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import importlib
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn

from libs.logging import log_as, serving
from libs.registry import SERVICES


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # one handler for every server: main() below


def _factory(name: str) -> Any:
    path = "gateway.app:app" if name == "gateway" else SERVICES[name].app
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


def _server(name: str, host: str, port: int) -> _Server:
    config = uvicorn.Config(
        _factory(name),
        factory=True,
        host=host,
        port=port,
        http="libs.server:HttpProtocol",
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
        log_config=None,
    )
    return _Server(config)


async def serve(apps: dict[str, tuple[str, int]]) -> int:
    servers: dict[str, _Server] = {}
    for name, (host, port) in apps.items():
        with serving(name):  # the app's factory configures logging and logs as the app
            servers[name] = _server(name, host, port)
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        print(f"{signal.Signals(signum).name} received: stopping the apps", flush=True)
        for s in servers.values():
            s.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)

    tasks: dict[asyncio.Task[None], str] = {}
    for name, s in servers.items():
        ctx = contextvars.copy_context()
        ctx.run(log_as, name)  # every request's task inherits the app's name
        tasks[loop.create_task(s.serve(), context=ctx)] = name
    # one app that cannot start (or stops on its own) stops the others: the supervisor
    # restarts the process, as it would one app's
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    failed = [tasks[t] for t in done if t.exception() or not servers[tasks[t]].should_exit]
    for s in servers.values():
        s.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    if failed:
        print(f"apps stopped because {', '.join(failed)} did", flush=True)
        return 1
    return 0


def _address(item: str) -> tuple[str, tuple[str, int]]:
    name, _, where = item.partition("=")
    host, _, port = where.rpartition(":")
    if name != "gateway" and name not in SERVICES:
        raise argparse.ArgumentTypeError(f"no app called {name!r}")
    return name, (host or "127.0.0.1", int(port))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.apps")
    parser.add_argument("apps", nargs="+", type=_address, metavar="name=host:port")
    args = parser.parse_args()
    import uvloop

    return uvloop.run(serve(dict(args.apps)))


if __name__ == "__main__":
    raise SystemExit(main())
