"""CPU per call of the shared HTTP client on the caller's side, without the rest of the path.

The llm's OpenAI adapter (``chat``, ``stream_chat``) and the gateway's upstream client (send,
read whole or stream, close) call the bench's fake upstream (its own process) back to back;
the figure is this process's CPU time per call. On a shared machine it is much steadier than
requests/s; run it against two source trees alternately to compare them::

    python -m tests.bench.transport_cpu [--calls 3000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from libs.embedded import free_port
from tests.bench.stack import ROOT, Proc, _wait_for


async def _per_call(call: Callable[[], Awaitable[None]], n: int) -> float:
    """Microseconds of CPU per call, after a warm-up."""
    for _ in range(max(n // 10, 20)):
        await call()
    start = time.process_time()
    for _ in range(n):
        await call()
    return (time.process_time() - start) / n * 1e6


async def measure(upstream: str, calls: int) -> dict[str, float]:
    from gateway.settings import GatewaySettings
    from gateway.upstream import make_upstream
    from services.llm.providers.base import ChatRequest
    from services.llm.providers.openai import OpenAIProvider

    provider = OpenAIProvider("bench", {"base_url": f"{upstream}/v1", "api_key": "sk-bench"})
    request = ChatRequest(model="m", messages=[{"role": "user", "content": "Say hello"}])

    async def chat() -> None:
        await provider.chat(request)

    async def stream() -> None:
        async for _ in provider.stream_chat(request):
            pass

    client = make_upstream(GatewaySettings(use_redis=False))
    url = f"{upstream}/v1/chat/completions"

    def proxied(body: bytes, whole: bool) -> Callable[[], Awaitable[None]]:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

        async def call() -> None:
            response = await client.send("POST", url, headers, body)
            if whole:
                await response.read()
            else:
                async for _ in response.chunks():
                    pass
            await response.close()

        return call

    try:
        return {
            "llm chat": await _per_call(chat, calls),
            "llm stream (20 chunks)": await _per_call(stream, calls // 4),
            "gateway, answer read whole": await _per_call(
                proxied(b'{"model": "m", "messages": []}', True), calls
            ),
            "gateway, stream relayed": await _per_call(
                proxied(b'{"model": "m", "messages": [], "stream": true}', False), calls // 4
            ),
        }
    finally:
        await provider.aclose()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.transport_cpu")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "fake-openai.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "tests.bench.fake_openai", "--port", str(port)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        fake = Proc("fake-openai", f"http://127.0.0.1:{port}", popen)
        try:
            _wait_for(fake, log)
            figures = uvloop.run(measure(fake.url, args.calls))
        finally:
            popen.terminate()
            popen.wait(10)
    print(json.dumps({k: round(v, 1) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
