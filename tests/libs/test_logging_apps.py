"""Several apps in one process (deploy/local/apps.py): each line names the app it comes from."""

from __future__ import annotations

import asyncio
import contextvars
import logging

import orjson

from libs.logging import JsonFormatter, TextFormatter, log_as, serving


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("aistack.test", logging.INFO, __file__, 1, msg, None, None)


def test_lines_name_the_app_they_are_logged_in() -> None:
    json_lines, text = JsonFormatter("gateway"), TextFormatter()
    # one process, no app named: the configured service, and text lines as before
    assert orjson.loads(json_lines.format(_record("hi")))["service"] == "gateway"
    assert text.format(_record("hi")) == "INFO    aistack.test: hi"
    with serving("llm"):
        assert orjson.loads(json_lines.format(_record("hi")))["service"] == "llm"
        assert text.format(_record("hi")).startswith("[llm] INFO    aistack.test: hi")
    assert orjson.loads(json_lines.format(_record("hi")))["service"] == "gateway"


async def test_tasks_started_in_an_apps_context_keep_its_name() -> None:
    formatter = JsonFormatter("gateway")

    async def request() -> str:  # a request's task, started by the app's server
        await asyncio.sleep(0)
        return str(orjson.loads(formatter.format(_record("x")))["service"])

    async def server(name: str) -> str:
        return await asyncio.create_task(request())

    loop = asyncio.get_running_loop()
    tasks = []
    for name in ("auth", "rag"):
        ctx = contextvars.copy_context()
        ctx.run(log_as, name)
        tasks.append(loop.create_task(server(name), context=ctx))
    assert await asyncio.gather(*tasks) == ["auth", "rag"]
