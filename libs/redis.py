"""Redis client factory and the request dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis


def make_redis(url: str, *, max_connections: int = 50) -> Redis:
    """Create an async Redis client (connects lazily, on first command)."""
    return Redis.from_url(
        url,
        max_connections=max_connections,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        decode_responses=False,
    )


def get_redis(request: Request) -> Redis:
    """The app's shared Redis client."""
    redis: Redis = request.app.state.redis
    return redis


RedisDep = Annotated[Redis, Depends(get_redis)]
