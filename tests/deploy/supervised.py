"""Real processes for the supervisor's tests.

``python -m tests.deploy.supervised run SPEC.json`` runs a :class:`Supervisor` over the
processes the spec names, as ``deploy.local.run`` does (signals included), and exits with
its code. ``python -m tests.deploy.supervised child NAME DIR MODE`` is one of those processes:
it appends its pid to ``DIR/NAME.pids``, says so on stdout and then

* ``serve``: sleeps until stopped;
* ``stubborn``: ignores SIGTERM and sleeps (only SIGKILL stops it);
* ``crash``: exits with code 3 at once, like a service refusing its configuration.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def child(name: str, folder: str, mode: str) -> int:
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with (Path(folder) / f"{name}.pids").open("a") as f:
        f.write(f"{os.getpid()}\n")
    print(f"{name} up as {os.getpid()}", flush=True)
    if mode == "crash":
        print("bad configuration", flush=True)
        return 3
    while True:
        time.sleep(60)


def run(spec_path: str) -> int:
    from deploy.local.supervisor import RestartPolicy, Supervisor

    spec = json.loads(Path(spec_path).read_text())
    supervisor = Supervisor(RestartPolicy(**spec["policy"]), kill_wait=spec["kill_wait"])
    for name, mode in spec["processes"].items():
        cmd = f"exec {sys.executable} -m tests.deploy.supervised child {name} {spec['dir']} {mode}"
        supervisor.add_process(name, cmd)
    code = supervisor.run()
    print(f"runner exits with {code}", flush=True)
    return code


if __name__ == "__main__":
    if sys.argv[1] == "child":
        sys.exit(child(*sys.argv[2:5]))
    sys.exit(run(sys.argv[2]))
