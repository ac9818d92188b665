"""CancelOnDisconnect: a handler whose client left before the answer is cancelled; a stream, an
answered request and someone else's cancellation are left alone, and the app still gets every
message it asks for."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from libs.app import create_app
from libs.disconnect import CANCELLED, CancelOnDisconnect
from libs.settings import ServiceSettings
from libs.testing import running
from tests.support.logs import recording

SCOPE: Scope = {
    "type": "http",
    "method": "POST",
    "path": "/call",
    "raw_path": b"/call",
    "query_string": b"",
    "headers": [(b"content-type", b"application/json")],
    "http_version": "1.1",
    "scheme": "http",
    "server": ("test", 80),
    "client": ("client", 1),
    "root_path": "",
}


class Client:
    """The server's side of one connection: the body, then ``http.disconnect`` once the client
    leaves (:meth:`leave`) or the response is complete, as uvicorn delivers them."""

    def __init__(self) -> None:
        self.body_sent = False
        self.gone = asyncio.Event()
        self.sent: list[Message] = []

    def leave(self) -> None:
        self.gone.set()

    async def receive(self) -> Message:
        if not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.gone.set()  # uvicorn: receive() answers http.disconnect once the response is done


def middleware(app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> CancelOnDisconnect:
    # watched as soon as the body is read (not after WATCH_AFTER_S): every case below is watched
    return CancelOnDisconnect(
        app, service="toy", claims=lambda scope: scope["path"] == "/call", watch_after_s=0
    )


def cancelled() -> float:
    return CANCELLED.labels("toy", "/call")._value.get()


async def test_a_handler_whose_client_left_is_cancelled_and_logged_499() -> None:
    started = asyncio.Event()
    reached_end: list[bool] = []

    async def slow_call(request: Request) -> PlainTextResponse:
        await request.body()
        started.set()
        await asyncio.sleep(60)  # a provider call
        reached_end.append(True)
        return PlainTextResponse("late")

    app = create_app(service="toy", settings=ServiceSettings(), use_database=False, use_redis=False)
    app.router.routes.append(Route("/call", slow_call, methods=["POST"]))
    # innermost, as the llm installs it: ObservabilityMiddleware logs what it leaves unanswered
    app.user_middleware.append(
        Middleware(CancelOnDisconnect, service="toy", claims=lambda s: s["path"] == "/call")
    )
    client = Client()
    before = cancelled()
    async with running(app):
        with recording() as logs:
            task = asyncio.create_task(app(dict(SCOPE), client.receive, client.send))
            await started.wait()
            client.leave()
            await asyncio.wait_for(task, 10)  # returns, not cancelled: the request just ends
    assert not task.cancelled() and task.exception() is None
    assert client.sent == [] and reached_end == []
    assert cancelled() == before + 1
    lines = [r.getMessage() for r in logs.records if r.name == "aistack.access"]
    assert lines == ["POST /call 499"]
    assert any("client went away" in r.getMessage() for r in logs.records)


async def test_a_started_stream_is_not_cancelled_and_still_sees_the_disconnect() -> None:
    seen: list[str] = []

    async def stream(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        # as Starlette's streaming responses do: wait for the disconnect, twice
        seen.append((await receive())["type"])
        seen.append((await receive())["type"])

    client = Client()
    before = cancelled()
    task = asyncio.create_task(middleware(stream)(dict(SCOPE), client.receive, client.send))
    await asyncio.sleep(0)
    client.leave()
    await asyncio.wait_for(task, 10)
    assert seen == ["http.disconnect", "http.disconnect"]
    assert cancelled() == before


async def test_work_after_the_answer_is_not_cancelled() -> None:
    """Background work after the response (Starlette's BackgroundTasks run in the request's task)
    while receive() already says http.disconnect (the response is complete)."""
    done: list[bool] = []

    async def answer_then_work(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        for _ in range(5):
            await asyncio.sleep(0)  # the watcher gets its http.disconnect meanwhile
        done.append(True)

    client = Client()
    before = cancelled()
    await asyncio.wait_for(
        middleware(answer_then_work)(dict(SCOPE), client.receive, client.send), 10
    )
    assert done == [True] and cancelled() == before


async def test_someone_elses_cancellation_goes_on() -> None:
    started = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        started.set()
        await asyncio.sleep(60)

    client = Client()
    task = asyncio.create_task(middleware(slow)(dict(SCOPE), client.receive, client.send))
    await started.wait()
    task.cancel()  # the server stopping, say
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_requests_not_claimed_are_left_alone() -> None:
    finished: list[bool] = []

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.sleep(0.05)
        finished.append(True)

    client = Client()
    client.leave()  # gone from the start
    scope = {**SCOPE, "path": "/other"}
    await asyncio.wait_for(middleware(slow)(scope, client.receive, client.send), 10)
    assert finished == [True]
