"""Cancel a request's handler when its client disconnects before the answer starts.

uvicorn does not cancel a handler whose client left: a non-streaming call to a slow upstream
(an LLM vendor) runs to its end or its timeout, for nobody. :class:`CancelOnDisconnect` wraps
``receive``: once the app has read the whole body (and the request is still running
``WATCH_AFTER_S`` later), a watcher task waits for the next message, which uvicorn only
delivers as ``http.disconnect`` (the client closed the connection, or the response is
complete). If the client left before the app sent ``http.response.start``, the
handler's task is cancelled (``Task.cancel``, taken back with ``Task.uncancel`` as
``asyncio.timeout`` does) and the request ends with no answer: ObservabilityMiddleware logs
and counts it as nginx's 499. Once a response has started, streams handle a disconnect
themselves (Starlette's ``StreamingResponse`` listens to ``receive`` and closes its iterator).

The idea is vLLM's ``with_cancellation`` (its OpenAI server: a task reads ``receive`` for
``http.disconnect`` and cancels the handler), here at the ASGI layer, without a second task
for the handler, and only until the answer starts.

Nothing is stolen from the app: a ``receive`` the app makes after the body (Starlette's
streaming responses wait on it for the disconnect) gets the watcher's message, every time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.registry import PROVIDER_CALLS
from libs.telemetry import Counter

log = logging.getLogger("aistack.http")

# a request still running this long after its body was read is watched for its client leaving
WATCH_AFTER_S = 0.05

CANCELLED = Counter(
    "aistack_http_cancelled_on_disconnect_total",
    "Requests whose handler was cancelled because the client left before the answer",
    ["service", "route"],
)


def provider_call(scope: Scope) -> bool:
    """A POST to one of the llm's provider calls (libs/registry.py): cancelled in the llm, and
    passed on by the gateway, when its client leaves before the answer starts."""
    return scope["method"] == "POST" and scope["path"] in PROVIDER_CALLS


def _route(scope: Scope) -> str:
    route = getattr(scope.get("route"), "path", None) or scope.get("aistack.route")
    return str(route or scope["path"])


class CancelOnDisconnect:
    """ASGI middleware: the requests ``claims`` picks are cancelled when their client leaves
    before the response starts (see the module's docstring). Put it inside
    ObservabilityMiddleware, so such a request is logged and counted as a 499.

    The watcher starts ``watch_after_s`` after the body was read (at once if the app asks for
    the next message itself): a quick answer, most of them, costs a timer instead of a task;
    a client gone meanwhile is noticed as soon as it starts.
    """

    def __init__(
        self,
        app: ASGIApp,
        service: str,
        claims: Callable[[Scope], bool],
        watch_after_s: float = WATCH_AFTER_S,
    ) -> None:
        self.app = app
        self.service = service
        self.claims = claims
        self.watch_after_s = watch_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.claims(scope):
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(receive, send, task, self.watch_after_s)
        try:
            await self.app(scope, watch.receive, watch.send)
        except asyncio.CancelledError:
            if not watch.gone or task.uncancel() > 0:
                raise  # someone else's cancellation (the server shutting down) goes on
            self._gone(scope)
        else:
            if watch.gone:
                # the app swallowed the cancellation (or finished meanwhile): take it back
                task.uncancel()
                self._gone(scope)
        finally:
            watch.close()

    def _gone(self, scope: Scope) -> None:
        route = _route(scope)
        CANCELLED.labels(self.service, route).inc()
        log.info(
            "client went away: %s %s cancelled before its answer", scope["method"], scope["path"]
        )


class _Watch:
    """One request's ``receive`` and ``send`` as the app sees them, and its watcher."""

    __slots__ = (
        "_receive",
        "_send",
        "after",
        "body_read",
        "gone",
        "started",
        "task",
        "timer",
        "watcher",
    )

    def __init__(self, receive: Receive, send: Send, task: asyncio.Task[Any], after: float):
        self._receive = receive
        self._send = send
        self.task = task
        self.after = after
        self.body_read = self.started = self.gone = False
        self.timer: asyncio.TimerHandle | None = None
        self.watcher: asyncio.Task[Message] | None = None

    async def receive(self) -> Message:
        if self.body_read:
            # every message after the body comes from the watcher (one reader of the server's
            # receive); shielded: the caller may be cancelled (a stream's listener when it
            # ends), the watcher must not
            return await asyncio.shield(self._start())
        message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self.body_read = True
            self.timer = asyncio.get_running_loop().call_later(self.after, self._start)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    def _start(self) -> asyncio.Task[Message]:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.watcher is None:
            self.watcher = asyncio.create_task(self._watch())
        return self.watcher

    async def _watch(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.started:
            self.gone = True
            self.task.cancel()
        return message

    def close(self) -> None:
        """The app returned: no more watching."""
        self.started = True  # nothing to cancel any more
        if self.timer is not None:
            self.timer.cancel()
        watcher = self.watcher
        if watcher is not None:
            if not watcher.done():
                watcher.cancel()
            elif not watcher.cancelled():
                watcher.exception()  # retrieved: a failed receive is not logged as lost
