"""Container entry point: the command chooses what the image runs.

serve <gateway|auth|llm|rag|jobs|billing>   the HTTP app under uvicorn
worker <auth|llm|rag|jobs|billing>          that service's arq worker
migrate                                     apply every service's migrations, then exit

Every app and worker also serves its Prometheus metrics on a port of its own (``METRICS_PORT``
/ ``WORKER_METRICS_PORT``; compose sets 9100 for all), bound to the same interface as the app
(``AISTACK_BIND``), so Prometheus on the container network can scrape it while it stays off
the published port.
"""

from __future__ import annotations

import os
import sys

from libs.registry import GATEWAY_PORT, SERVICES

APPS = {"gateway": "gateway.app:app", **{name: s.app for name, s in SERVICES.items()}}
# uvicorn's httptools protocol, sending a complete answer in one write (libs/server.py)
HTTP_PROTOCOL = "libs.server:HttpProtocol"
DEFAULT_PORTS = {"gateway": GATEWAY_PORT, **{name: s.port for name, s in SERVICES.items()}}


def _bind(name: str) -> str:
    """The interface the process serves on; its metrics listener binds the same one (the
    settings' ``<NAME>_HOST``, which defaults to loopback, unreachable from other containers)."""
    bind = os.environ.get("AISTACK_BIND", "0.0.0.0")
    os.environ.setdefault(f"{name.upper()}_HOST", bind)
    return bind


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve" and argv[1] in APPS:
        name = argv[1]
        port = os.environ.get(f"{name.upper()}_PORT", str(DEFAULT_PORTS[name]))
        args = [
            sys.executable, "-m", "uvicorn", "--factory", APPS[name],
            "--host", _bind(name),
            "--port", port, "--no-access-log", "--timeout-graceful-shutdown", "10",
            "--http", HTTP_PROTOCOL,
            "--proxy-headers",
            "--forwarded-allow-ips", os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
            *argv[2:],
        ]  # fmt: skip
        os.execv(sys.executable, args)  # noqa: S606
    if len(argv) >= 2 and argv[0] == "worker":
        _bind(argv[1])
        os.execv(sys.executable, [sys.executable, "-m", "libs.worker", *argv[1:]])  # noqa: S606
    if argv[:1] == ["migrate"]:
        from libs.migrations import upgrade_all
        from libs.settings import ServiceSettings

        upgrade_all(ServiceSettings().database_url)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
