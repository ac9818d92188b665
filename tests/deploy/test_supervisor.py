"""The local runner's supervisor, with real child processes (see tests/deploy/supervised.py)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from honcho.printer import Printer

from deploy.local.supervisor import Failures, RestartPolicy, Supervisor
from libs.embedded import EmbeddedRedis, free_port, port_open

ROOT = Path(__file__).resolve().parents[2]
FAST = {"first_delay": 0.1, "max_delay": 1.0, "healthy_after": 30.0, "max_failures": 3}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        time.sleep(0.02)


@dataclass
class Runner:
    """A supervisor in its own process, as ``make run`` has it; its output gathered."""

    proc: subprocess.Popen[str]
    folder: Path
    lines: list[str] = field(default_factory=list)

    def pids(self, name: str) -> list[int]:
        path = self.folder / f"{name}.pids"
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def said(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in list(self.lines))

    def output(self) -> str:
        return "\n".join(self.lines)

    def finish(self, timeout: float = 5.0) -> int:
        code = self.proc.wait(timeout)
        time.sleep(0.05)  # the reader thread takes the last lines
        return code


@pytest.fixture
def start_runner(tmp_path: Path) -> Iterator[Callable[..., Runner]]:
    runners: list[Runner] = []

    def start(processes: dict[str, str], kill_wait: float = 2.0, **policy: float) -> Runner:
        spec = tmp_path / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "dir": str(tmp_path),
                    "kill_wait": kill_wait,
                    "policy": {**FAST, **policy},
                    "processes": processes,
                }
            )
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.deploy.supervised", "run", str(spec)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        runner = Runner(proc, tmp_path)
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(
            target=lambda: runner.lines.extend(line.rstrip("\n") for line in stdout),
            daemon=True,
        ).start()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:  # a failed test must not leave processes behind
        if runner.proc.poll() is None:
            runner.proc.send_signal(signal.SIGTERM)
            runner.proc.wait(10)
        for path in tmp_path.glob("*.pids"):
            for pid in runner.pids(path.stem):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_killed_process_is_restarted_while_the_others_keep_running(
    start_runner: Callable[..., Runner],
) -> None:
    runner = start_runner({"api": "serve", "other": "serve"})
    wait_for(lambda: runner.pids("api") and runner.pids("other"))
    [first] = runner.pids("api")
    [other] = runner.pids("other")
    # each child's lines keep honcho's prefix: time, padded name, bar
    wait_for(lambda: runner.said(rf"^\d\d:\d\d:\d\d api +\| api up as {first}$"))

    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(runner.pids("api")) == 2)
    second = runner.pids("api")[1]
    assert second != first and alive(second)
    assert runner.said(r"system \| api exited with code -9; restarting in 0\.1s$")
    assert runner.pids("other") == [other] and alive(other)
    assert runner.proc.poll() is None

    # a second death waits twice as long (it did not stay up healthy_after)
    os.kill(second, signal.SIGKILL)
    wait_for(lambda: len(runner.pids("api")) == 3)
    assert runner.said(r"api exited with code -9; restarting in 0\.2s$")

    runner.proc.send_signal(signal.SIGINT)
    assert runner.finish() == 130, runner.output()
    assert not alive(runner.pids("api")[-1]) and not alive(other)
    assert runner.said(r"system \| SIGINT received")


def test_process_that_keeps_crashing_at_start_makes_the_runner_give_up(
    start_runner: Callable[..., Runner],
) -> None:
    runner = start_runner({"fine": "serve", "broken": "crash"}, first_delay=0.05)
    assert runner.finish() == 1, runner.output()
    assert len(runner.pids("broken")) == 3  # max_failures starts in all, then no more
    assert runner.said(r"broken +\| bad configuration")
    assert runner.said(r"broken exited with code 3; restarting in 0\.1s")
    assert runner.said(
        r"broken exited with code 3, 3 times in a row without staying up 30s; giving up on it;"
        r" stopping everything"
    )
    [fine] = runner.pids("fine")
    assert not alive(fine)
    assert runner.said("runner exits with 1")


def test_sigterm_stops_every_child_and_kills_one_that_ignores_it(
    start_runner: Callable[..., Runner],
) -> None:
    runner = start_runner({"api": "serve", "stubborn": "stubborn"}, kill_wait=0.5)
    wait_for(lambda: runner.said("api up as") and runner.said("stubborn up as"))
    [api] = runner.pids("api")
    [stubborn] = runner.pids("stubborn")
    started = time.monotonic()
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.finish() == 143, runner.output()
    assert time.monotonic() - started < 3
    assert not alive(api) and not alive(stubborn)
    assert runner.said(r"sending SIGKILL to stubborn")
    assert runner.said(r"api stopped \(rc=-15\)")
    # nothing was restarted while stopping
    assert len(runner.pids("api")) == 1 and len(runner.pids("stubborn")) == 1


def test_restart_delay_doubles_up_to_the_cap_and_resets_after_a_healthy_run() -> None:
    policy = RestartPolicy(first_delay=0.5, max_delay=10, healthy_after=30, max_failures=9)
    failures = Failures(policy)
    assert [failures.exited(uptime=1) for _ in range(8)] == [0.5, 1, 2, 4, 8, 10, 10, 10]
    assert failures.exited(uptime=1) is None  # the 9th exit in a row: give up
    failures = Failures(policy)
    assert [failures.exited(uptime=2), failures.exited(uptime=2)] == [0.5, 1]
    assert failures.exited(uptime=31) == 0.5  # it had stayed up: starts over
    assert failures.count == 1


def _in_thread(supervisor: Supervisor) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(supervisor.run()), daemon=True)
    thread.start()
    return thread, codes


def test_a_watched_redis_that_dies_is_started_again(tmp_path: Path) -> None:
    redis = EmbeddedRedis(tmp_path / "redis", port=free_port()).start()
    out = io.StringIO()
    supervisor = Supervisor(RestartPolicy(first_delay=0.1), printer=Printer(out))
    supervisor.watch("redis", redis.running, redis.start, interval=0.05)
    thread, codes = _in_thread(supervisor)
    try:
        assert redis.proc is not None
        first = redis.proc
        first.kill()
        first.wait()
        wait_for(lambda: "system | redis restarted" in out.getvalue())
        assert redis.proc is not first and redis.running()
        assert port_open(redis.host, redis.port)
        assert "system | redis is not running; restarting in 0.1s" in out.getvalue()
    finally:
        supervisor.stop()
        thread.join(5)
        redis.stop()
    assert codes == [0]
    assert not redis.running()


def test_a_watched_server_that_cannot_start_again_stops_everything() -> None:
    out = io.StringIO()
    supervisor = Supervisor(RestartPolicy(first_delay=0.01, max_failures=2), printer=Printer(out))
    attempts: list[float] = []

    def restart() -> None:
        attempts.append(time.monotonic())
        raise RuntimeError("data directory is locked")

    supervisor.watch("postgres", lambda: False, restart, interval=0.01)
    thread, codes = _in_thread(supervisor)
    thread.join(5)
    assert codes == [1]
    assert len(attempts) == 1
    assert "postgres did not start: data directory is locked" in out.getvalue()
    assert supervisor.gave_up == (
        "postgres is down and 1 restarts in a row did not keep it up; giving up on it"
    )


def test_one_ctrl_c_delivered_twice_still_stops_cleanly(
    start_runner: Callable[..., Runner],
) -> None:
    # a terminal's Ctrl-C reaches the runner twice: from the terminal and forwarded by uv run
    runner = start_runner({"stubborn": "stubborn"}, kill_wait=1.5)
    wait_for(lambda: runner.said("stubborn up as"))
    runner.proc.send_signal(signal.SIGINT)
    wait_for(lambda: runner.said("SIGINT received"))  # two deliveries, not one pending signal
    runner.proc.send_signal(signal.SIGINT)
    assert runner.finish() == 130, runner.output()
    # still stopping gracefully: the one that ignores SIGTERM is killed after kill_wait
    assert not runner.said("killing everything now")
    assert runner.said(r"sending SIGKILL to stubborn")
