"""The worker's Redis connections: arq's pool with a read deadline on every command, blocking
commands given their own wait on top (see :mod:`libs.worker`)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from redis.exceptions import RedisError

from libs.redis import CancelSafeSend, mixed_in
from libs.settings import WORKER_REDIS_TIMEOUT_S

# what an unreachable Redis raises (refused, reset, timed out); redis' ConnectionError and
# TimeoutError are RedisErrors
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0
# while Redis stays away, a reminder in the log this often
DOWN_REPORT_EVERY_S = 30.0
# longest wait for an answer from Redis (WORKER_REDIS_TIMEOUT_S); see the module docstring
DEFAULT_REDIS_TIMEOUT_S = WORKER_REDIS_TIMEOUT_S


@dataclasses.dataclass
class WorkerRedisSettings(RedisSettings):
    """arq's Redis settings plus the read deadline of :class:`Worker`'s connections (arq's own
    ``Worker`` and ``create_pool`` ignore it)."""

    read_timeout_s: float = DEFAULT_REDIS_TIMEOUT_S


def worker_redis_settings(
    url: str, read_timeout_s: float = DEFAULT_REDIS_TIMEOUT_S
) -> WorkerRedisSettings:
    base = RedisSettings.from_dsn(url)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return WorkerRedisSettings(**fields, read_timeout_s=read_timeout_s)


# commands that wait in Redis by design, by where their wait is written (seconds; 0: forever)
_WAIT_IN_LAST_ARG = frozenset({"BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BZPOPMIN", "BZPOPMAX"})
_WAIT_IN_FIRST_ARG = frozenset({"BLMPOP", "BZMPOP"})


def _word(arg: Any) -> str:
    return arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)


def _waits_in_redis(args: Sequence[Any]) -> float | None:
    """How long a command may wait in Redis by design, in seconds (``inf``: until something
    arrives); None for a command that answers at once."""
    if not args:
        return None
    name = _word(args[0]).upper()
    try:
        if name in ("XREAD", "XREADGROUP"):
            wait = None
            for i in range(1, len(args) - 1):
                word = _word(args[i]).upper()
                if word == "STREAMS":
                    break
                if word == "BLOCK":
                    wait = float(args[i + 1]) / 1000
                    break
            if wait is None:
                return None
        elif name in _WAIT_IN_LAST_ARG:
            wait = float(args[-1])
        elif name in _WAIT_IN_FIRST_ARG:
            wait = float(args[1])
        else:
            return None
    except (ValueError, TypeError, IndexError):
        return None  # Redis refuses it at once
    return math.inf if wait <= 0 else wait


class _WaitAware(CancelSafeSend):
    """Mixed into the pool's connection class: a command that waits in Redis by design gets
    that wait on top of the socket timeout (redis-py applies the socket timeout alone, so a
    ``BLOCK`` longer than it raised TimeoutError on a healthy Redis). Sends keep a
    cancellation (:class:`libs.redis.CancelSafeSend`): without that, a worker's poll loop
    could swallow the cancel meant to stop it and run on."""

    _waits_s: float | None = None

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._waits_s = None  # pipelines send here directly: their reads take the plain timeout
        await super().send_packed_command(command, check_health)

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        await super().send_command(*args, **kwargs)
        self._waits_s = _waits_in_redis(args)

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - redis-py's signature
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        waits, self._waits_s = self._waits_s, None
        deadline = self.socket_timeout
        if waits is not None and timeout is None and deadline is not None:
            self.socket_timeout = None if math.isinf(waits) else deadline + waits
        try:
            return await super().read_response(
                disable_decoding,
                timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        finally:
            self.socket_timeout = deadline


def open_pool(
    settings: RedisSettings,
    *,
    job_serializer: Any = None,
    job_deserializer: Any = None,
    default_queue_name: str | None = None,
    expires_extra_ms: int | None = None,
) -> ArqRedis:
    """arq's pool as :func:`arq.connections.create_pool` makes it (without its connection
    retries and PING: it connects on first use), whose reads have a deadline:
    ``settings.read_timeout_s`` (:class:`WorkerRedisSettings`), blocking reads get their wait
    on top."""
    if settings.sentinel or not isinstance(settings.host, str):
        raise ValueError("libs.worker does not support Redis Sentinel settings")
    extra: dict[str, Any] = {}
    if default_queue_name is not None:
        extra["default_queue_name"] = default_queue_name
    if expires_extra_ms is not None:
        extra["expires_extra_ms"] = expires_extra_ms
    pool = ArqRedis(
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        **extra,
        host=settings.host,
        port=settings.port,
        unix_socket_path=settings.unix_socket_path,
        socket_connect_timeout=settings.conn_timeout,
        socket_timeout=getattr(settings, "read_timeout_s", DEFAULT_REDIS_TIMEOUT_S),
        ssl=settings.ssl,
        ssl_keyfile=settings.ssl_keyfile,
        ssl_certfile=settings.ssl_certfile,
        ssl_cert_reqs=settings.ssl_cert_reqs,
        ssl_ca_certs=settings.ssl_ca_certs,
        ssl_ca_data=settings.ssl_ca_data,
        ssl_check_hostname=settings.ssl_check_hostname,
        retry=settings.retry,
        retry_on_timeout=settings.retry_on_timeout,
        retry_on_error=settings.retry_on_error,
        max_connections=settings.max_connections,
        db=settings.database,
        username=settings.username,
        password=settings.password,
        encoding="utf8",
    )
    connections = pool.connection_pool
    connections.connection_class = mixed_in(_WaitAware, connections.connection_class)
    return pool
