"""A client that leaves before any answer is not a server error in the logs or the metrics."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from libs.app import create_app
from libs.settings import ServiceSettings
from libs.testing import running
from tests.support.logs import recording


class ReadsThenGivesUp:
    """An ASGI endpoint that reads the body and answers nothing once the client is gone (as
    the llm's hot chat route does)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await Request(scope, receive).body()
        except ClientDisconnect:
            return  # nobody to answer


async def test_a_request_whose_client_left_mid_body_is_logged_499() -> None:
    app = create_app(service="toy", settings=ServiceSettings(), use_database=False, use_redis=False)
    app.router.routes.append(Route("/upload", ReadsThenGivesUp(), methods=["POST"]))
    messages: list[Message] = [
        {"type": "http.request", "body": b"x" * 100, "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "raw_path": b"/upload",
        "query_string": b"",
        "headers": [(b"content-type", b"application/octet-stream")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("client", 1),
        "root_path": "",
    }
    async with running(app):
        with recording() as logs:
            await app(scope, receive, send)
    assert sent == []
    lines = [r.getMessage() for r in logs.records if r.name == "aistack.access"]
    assert lines == ["POST /upload 499"]
