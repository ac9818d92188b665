"""Keep the local stack running when one of its processes dies.

honcho's ``Manager`` follows foreman's contract: as soon as one process exits, it stops all
the others. That is right for a Procfile in development and wrong for a stack someone is
using or testing faults on: ``kill -9`` of the llm service took the gateway, the other four
services, their workers and the databases down with it. :class:`Supervisor` keeps what honcho
does well and replaces only that loop:

* each process still runs through honcho's ``Process`` (its command through a shell, in a
  session of its own, stdout and stderr merged) and its lines still go through honcho's
  ``Printer`` (``12:00:01 llm     | ...``, one colour per process);
* a process that exits on its own is started again after a pause that doubles from
  :attr:`RestartPolicy.first_delay` up to :attr:`RestartPolicy.max_delay`
  (``system | llm exited with code -9; restarting in 0.5s``); once it stays up
  :attr:`RestartPolicy.healthy_after` seconds its pause and its failure count start over;
* a process that exits :attr:`RestartPolicy.max_failures` times in a row, never staying up that
  long (a bad setting, a missing file), cannot start: the supervisor says so, stops everything
  and returns 1 instead of restarting it forever;
* something the supervisor did not start itself (the embedded PostgreSQL and Redis) can be
  watched: :meth:`Supervisor.watch` checks it every second and starts it again under the same
  rules;
* SIGINT / SIGTERM send SIGTERM to every process group, then SIGKILL to what is still running
  ``kill_wait`` seconds later (a second Ctrl-C kills at once); ``run`` returns 130 / 143.

Why not another library: supervisor (supervisord) is a daemon driven by a configuration file
and XML-RPC; it prints no per-process prefix, its back-off grows by one second a try, and a
process it gives up on (``FATAL``) leaves the rest running unless an event-listener process is
added to stop them. circus brings pyzmq, tornado and psutil, a control socket and a plugin for
flapping that stops only the flapping watcher. Both are built to run services on a server,
which compose.yaml already covers with ``restart:`` policies; for ``make run`` a loop of about
two hundred lines over honcho's pieces, with no new dependency, does exactly what is wanted.

honcho's ``Manager`` forks a helper process per child to read its output; here a thread does it
(no forked helpers that also receive the terminal's Ctrl-C), and every event (a line, a start,
an exit, a watch's news) goes through one queue to the thread that called :meth:`run`.
"""

from __future__ import annotations

import contextlib
import datetime
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from honcho.colour import get_colours
from honcho.compat import ProcessManager
from honcho.printer import Message, Printer
from honcho.process import Process

SYSTEM = "system"
# the exit status a shell reports for a program stopped by these signals
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass(frozen=True)
class RestartPolicy:
    """When to start an exited process again, and when to stop trying."""

    first_delay: float = 0.5
    max_delay: float = 10.0
    # up this long: healthy again, so the next exit waits first_delay and counts as the first
    healthy_after: float = 30.0
    # exits in a row without staying up healthy_after: it cannot start, give up
    max_failures: int = 5

    def delay(self, failures: int) -> float:
        """The pause after the ``failures``-th exit in a row (1-based)."""
        return min(self.first_delay * 2 ** max(failures - 1, 0), self.max_delay)


@dataclass
class Failures:
    """One process's exits in a row, each seen with how long the process had been up."""

    policy: RestartPolicy
    count: int = 0

    def exited(self, uptime: float) -> float | None:
        """Count one exit: the pause before starting again, or None when it is time to give up."""
        if uptime >= self.policy.healthy_after:
            self.count = 0
        self.count += 1
        if self.count >= self.policy.max_failures:
            return None
        return self.policy.delay(self.count)


@dataclass
class _Proc:
    name: str
    cmd: str
    env: dict[str, str] | None
    cwd: str | None
    colour: str
    failures: Failures
    running: bool = False  # its reader thread is running: starting, up, or just exited
    pid: int | None = None
    started: float = 0.0
    restart_at: float | None = None


@dataclass
class _Watch:
    name: str
    alive: Callable[[], bool]
    restart: Callable[[], object]
    interval: float
    thread: threading.Thread | None = field(default=None, repr=False)


class Supervisor:
    """Runs processes, restarts the ones that exit, and stops them all on a signal or give-up."""

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        printer: Printer | None = None,
        kill_wait: float = 10.0,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self.kill_wait = kill_wait
        # why the supervisor stopped everything on its own (None after a signal or stop())
        self.gave_up: str | None = None
        self._printer = printer if printer is not None else Printer(sys.stdout)
        self._printer.width = len(SYSTEM)
        self._colours = get_colours()
        # SimpleQueue: put() is safe from a signal handler interrupting a get()
        self._events: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._procs: dict[str, _Proc] = {}
        self._watches: list[_Watch] = []
        self._groups = ProcessManager()
        self._halt = threading.Event()  # set once stopping; wakes the watch threads
        self._returncode: int | None = None
        self._stopping_since: float | None = None
        self._killed = False

    # -- setup -------------------------------------------------------------------------------

    def add_process(
        self, name: str, cmd: str, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> None:
        """A shell command to keep running; started by :meth:`run`."""
        if name in self._procs or name == SYSTEM:
            raise ValueError(f"process name {name!r} is taken")
        self._procs[name] = _Proc(name, cmd, env, cwd, next(self._colours), Failures(self.policy))
        self._printer.width = max(self._printer.width, len(name))

    def watch(
        self,
        name: str,
        alive: Callable[[], bool],
        restart: Callable[[], object],
        interval: float = 1.0,
    ) -> None:
        """Check ``alive()`` every ``interval`` seconds while running; ``restart()`` when false.

        For servers started before :meth:`run` (they are not stopped by it). ``restart`` runs
        on the watch's own thread and may take a while; when it raises, the next check counts
        another failure.
        """
        self._watches.append(_Watch(name, alive, restart, interval))

    # -- control -----------------------------------------------------------------------------

    def stop(self, returncode: int = 0) -> None:
        """Stop every process and make :meth:`run` return; safe from any thread."""
        self._post("stop-request", returncode)

    def run(self) -> int:
        """Start everything and supervise until stopped; the exit code for the runner.

        0 after :meth:`stop`, 130 / 143 after SIGINT / SIGTERM, 1 after giving up on a process.
        """
        previous = self._install_signal_handlers()
        try:
            for proc in self._procs.values():
                self._spawn(proc)
            for w in self._watches:
                w.thread = threading.Thread(
                    target=self._watch_loop, args=(w,), name=f"watch-{w.name}", daemon=True
                )
                w.thread.start()
            while self._stopping_since is None or any(p.running for p in self._procs.values()):
                try:
                    msg = self._events.get(timeout=0.1)
                except queue.Empty:
                    pass
                else:
                    self._handle(msg)
                self._tick(time.monotonic())
            self._halt.set()
            for w in self._watches:
                if w.thread is not None:
                    w.thread.join()
            # lines a watch said while it was finishing
            while not self._events.empty():
                msg = self._events.get()
                if msg.type == "line":
                    self._printer.write(msg)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self._returncode or 0

    # -- internals ---------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # embedded in another program (tests): it calls stop()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._post("signal", signum)

        return {s: signal.signal(s, on_signal) for s in SIGNAL_EXIT}

    def _post(self, kind: str, data: object, name: str = SYSTEM) -> None:
        self._events.put(Message(kind, data, datetime.datetime.now(), name, None))

    def _say(self, text: str) -> None:
        """A system line, printed by the supervising thread."""
        self._post("line", text)

    def _spawn(self, proc: _Proc) -> None:
        proc.running, proc.pid, proc.restart_at = True, None, None
        proc.started = time.monotonic()
        threading.Thread(target=self._run_one, args=(proc,), name=proc.name, daemon=True).start()

    def _run_one(self, proc: _Proc) -> None:
        """On its own thread: start the command, relay its lines, report its exit."""
        child = Process(proc.cmd, name=proc.name, colour=proc.colour, env=proc.env, cwd=proc.cwd)
        try:
            child.run(self._events)
        except Exception as exc:  # the command could not even be started
            self._post("line", f"cannot start {proc.name}: {exc}")
            self._post("stop", {"returncode": None}, proc.name)

    def _handle(self, msg: Message) -> None:
        now = time.monotonic()
        if msg.type == "line":
            self._printer.write(msg)
        elif msg.type == "start":
            proc = self._procs[msg.name]
            proc.pid = msg.data["pid"]
            self._printer.write(
                msg._replace(
                    type="line",
                    name=SYSTEM,
                    colour=None,
                    data=f"{msg.name} started (pid={proc.pid})",
                )
            )
            if self._stopping_since is not None:  # started while everything is stopping
                self._signal_group(proc, kill=self._killed)
        elif msg.type == "stop":
            self._exited(self._procs[msg.name], msg.data["returncode"], now)
        elif msg.type == "signal":
            signum = signal.Signals(msg.data)
            if self._stopping_since is not None and now - self._stopping_since < 1.0:
                # one Ctrl-C in a terminal arrives twice: from the terminal to the whole
                # process group and forwarded by `uv run`; only a second press kills
                pass
            elif self._stopping_since is not None and not self._killed:
                self._say(f"{signum.name} received again: killing everything now")
                self._kill_all()
            else:
                self._say(f"{signum.name} received")
                self._shutdown(SIGNAL_EXIT[signum])
        elif msg.type == "stop-request":
            self._shutdown(int(msg.data))
        elif msg.type == "give-up":
            self.gave_up = str(msg.data)
            self._say(f"{msg.data}; stopping everything")
            self._shutdown(1)

    def _exited(self, proc: _Proc, code: int | None, now: float) -> None:
        proc.running, proc.pid = False, None
        if self._stopping_since is not None:
            self._say(f"{proc.name} stopped (rc={code})")
            return
        delay = proc.failures.exited(now - proc.started)
        if delay is None:
            self.gave_up = (
                f"{proc.name} exited with code {code}, {proc.failures.count} times in a row"
                f" without staying up {self.policy.healthy_after:g}s; giving up on it"
            )
            self._say(f"{self.gave_up}; stopping everything")
            self._shutdown(1)
            return
        self._say(f"{proc.name} exited with code {code}; restarting in {delay:.1f}s")
        proc.restart_at = now + delay

    def _tick(self, now: float) -> None:
        if self._stopping_since is None:
            for proc in self._procs.values():
                if proc.restart_at is not None and now >= proc.restart_at:
                    self._spawn(proc)
        elif not self._killed and now - self._stopping_since >= self.kill_wait:
            self._kill_all()

    def _shutdown(self, returncode: int) -> None:
        if self._stopping_since is not None:
            return
        self._returncode = returncode
        self._stopping_since = time.monotonic()
        self._halt.set()
        for proc in self._procs.values():
            proc.restart_at = None
            if proc.running and proc.pid is not None:
                self._say(f"sending SIGTERM to {proc.name} (pid {proc.pid})")
                self._signal_group(proc, kill=False)

    def _kill_all(self) -> None:
        self._killed = True
        for proc in self._procs.values():
            if proc.running and proc.pid is not None:
                self._say(f"sending SIGKILL to {proc.name} (pid {proc.pid})")
                self._signal_group(proc, kill=True)

    def _signal_group(self, proc: _Proc, kill: bool) -> None:
        # each child leads its own session (honcho's Popen), so its group is its pid
        assert proc.pid is not None
        with contextlib.suppress(OSError):
            (self._groups.kill if kill else self._groups.terminate)(proc.pid)

    def _watch_loop(self, w: _Watch) -> None:
        """On its own thread: check ``w`` and start it again while the supervisor runs."""
        failures = Failures(self.policy)
        up_since = time.monotonic()
        while not self._halt.wait(w.interval):
            try:
                if w.alive():
                    continue
            except Exception as exc:
                self._say(f"checking {w.name} failed: {exc}")
            delay = failures.exited(time.monotonic() - up_since)
            if delay is None:
                self._post(
                    "give-up",
                    f"{w.name} is down and {failures.count - 1} restarts in a row did not keep"
                    " it up; giving up on it",
                )
                return
            self._say(f"{w.name} is not running; restarting in {delay:.1f}s")
            if self._halt.wait(delay):
                return
            try:
                w.restart()
            except Exception as exc:
                self._say(f"{w.name} did not start: {exc}")
            else:
                self._say(f"{w.name} restarted")
            up_since = time.monotonic()
