"""Webhook receivers for the bench (their own processes): ``fast`` answers at once, ``slow``
after a second, as a struggling endpoint would."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def _fast(request: Request) -> Response:
    await request.body()
    return Response(status_code=204)


async def _slow(request: Request) -> Response:
    await request.body()
    await asyncio.sleep(1.0)
    return Response(status_code=204)


async def _health(request: Request) -> Response:
    return Response("ok")


def fast() -> Starlette:
    return Starlette(routes=[Route("/hook", _fast, methods=["POST"]), Route("/", _health)])


def slow() -> Starlette:
    return Starlette(routes=[Route("/hook", _slow, methods=["POST"]), Route("/", _health)])
