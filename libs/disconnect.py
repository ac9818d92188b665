"""Cancel a request's handler when its client disconnects before the answer starts.

uvicorn does not cancel a handler whose client left: a non-streaming call to a slow upstream
(an LLM vendor) runs to its end or its timeout, for nobody. :class:`CancelOnDisconnect` wraps
``receive``: once the app has read the whole body, a watcher task waits for the next message,
which uvicorn only delivers as ``http.disconnect`` (the client closed the connection, or the
response is complete). If the client left before the app sent ``http.response.start``, the
handler's task is cancelled (``Task.cancel``, taken back with ``Task.uncancel`` as
``asyncio.timeout`` does) and the request ends with no answer: ObservabilityMiddleware logs
and counts it as nginx's 499. Once a response has started, streams handle a disconnect
themselves (Starlette's ``StreamingResponse`` listens to ``receive`` and closes its iterator).

Nothing is stolen from the app: a ``receive`` the app makes after the body (Starlette's
streaming responses wait on it for the disconnect) gets the watcher's message, every time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.telemetry import Counter

log = logging.getLogger("aistack.http")

CANCELLED = Counter(
    "aistack_http_cancelled_on_disconnect_total",
    "Requests whose handler was cancelled because the client left before the answer",
    ["service", "route"],
)


def _route(scope: Scope) -> str:
    route = getattr(scope.get("route"), "path", None) or scope.get("aistack.route")
    return str(route or scope["path"])


class CancelOnDisconnect:
    """ASGI middleware: the requests ``claims`` picks are cancelled when their client leaves
    before the response starts (see the module's docstring). Put it inside
    ObservabilityMiddleware, so such a request is logged and counted as a 499."""

    def __init__(self, app: ASGIApp, service: str, claims: Callable[[Scope], bool]) -> None:
        self.app = app
        self.service = service
        self.claims = claims

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.claims(scope):
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        watcher: asyncio.Task[Message] | None = None
        # "started": the app sent http.response.start; "done": the app returned
        started = done = gone = False

        async def watch() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and not started and not done:
                gone = True
                task.cancel()
            return message

        async def watched_receive() -> Message:
            nonlocal watcher
            if watcher is not None:
                # shielded: the caller may be cancelled (a stream's listener when it ends),
                # the watcher must not
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.create_task(watch())
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        except asyncio.CancelledError:
            if not gone or task.uncancel() > 0:
                raise  # someone else's cancellation (the server shutting down) goes on
            self._gone(scope)
        else:
            if gone:
                # the app swallowed the cancellation (or finished meanwhile): take it back
                task.uncancel()
                self._gone(scope)
        finally:
            done = True
            if watcher is not None:
                if not watcher.done():
                    watcher.cancel()
                elif not watcher.cancelled():
                    watcher.exception()  # retrieved: a failed receive is not logged as lost

    def _gone(self, scope: Scope) -> None:
        route = _route(scope)
        CANCELLED.labels(self.service, route).inc()
        log.info(
            "client went away: %s %s cancelled before its answer", scope["method"], scope["path"]
        )
