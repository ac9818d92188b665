"""``make soak DURATION=600``: a bounded mixed load through a real stack, for a while.

Real processes (tests/bench/stack.py): the gateway, auth, llm, the billing and jobs workers
(which consume the usage records and job events the load produces), embedded PostgreSQL and
Redis, and the fast fake OpenAI upstream (tests/bench/fake_openai.py) behind the llm. A fixed
set of closed-loop clients, so the load stays bounded on two cores:

- chat (2 clients) and streamed chat (1), API key;
- embeddings (1), API key;
- auth (1, paced): ``/v1/auth/me`` with the access token, a refresh every third round, a
  login every 10 s (argon2: CPU-heavy on purpose, but rare), an API key created, used,
  revoked and refused again every 15 s;
- deliberate client errors (1): a body that is not JSON, a chat without messages, an unknown
  model, an unknown conversation id, an unknown, a malformed and a revoked API key, an
  unknown path; each must be the 4xx it is (counted apart from the rest).

Every window it records each process's resident memory and scrapes each one's metrics
listener (as Prometheus would; how long a scrape takes is reported). The report: requests,
5xx, 4xx (deliberate and not), p50/p99 per window; RSS per process, and its growth from the
end of the warm-up to the end. It exits 1 when any 5xx, unexpected status or connection error
was seen, or a process of aistack grew by 10 % or more after the warm-up.

    python -m tests.bench.soak --duration 600 [--warmup 60] [--window 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import secrets
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import httpx
import orjson
import psutil
import uvloop

from tests.bench.load import _Connection
from tests.bench.stack import Proc, Stack, stack

# the limits are not what is soaked: high enough never to refuse the load
ENV = {
    "GATEWAY_RATE_LIMIT_KEY_RPM": "100000000",
    "GATEWAY_RATE_LIMIT_USER_RPM": "100000000",
    "GATEWAY_RATE_LIMIT_ORG_RPM": "100000000",
    # deliberate bad keys from one address would otherwise lock every client out (429)
    "GATEWAY_RATE_LIMIT_AUTH_FAILURES": "0",
    "AUTH_REFRESHES_PER_IP_PER_MINUTE": "100000",
    "AUTH_LOGIN_FAILURES_PER_IP": "100000",
    # billing publishes each organization's plan, whose rpm, tpm and budget the gateway and
    # the llm then apply (the shipped free plan: 60 requests a minute)
    "BILLING_PLANS_CONFIG": str(Path(__file__).parents[1] / "support" / "plans_unlimited.yaml"),
}
GROWTH_LIMIT_PCT = 10.0
CHAT = {"model": "default", "messages": [{"role": "user", "content": "Say hello"}]}
# the deliberate errors: what each sends, and the one status it must get
ERRORS: dict[str, int] = {
    "error: body not JSON": 400,
    "error: chat without messages": 400,
    "error: unknown model": 404,
    "error: unknown conversation": 404,
    "error: unknown API key": 401,
    "error: malformed API key": 401,
    "error: revoked API key": 401,
    "error: unknown path": 404,
}


@dataclass
class Sample:
    at: float  # seconds since the load started
    kind: str
    status: int  # 0: the connection failed
    ms: float


@dataclass
class Processes:
    """The processes watched: RSS and metrics listener of each."""

    procs: dict[str, psutil.Process]
    metrics: dict[str, str]
    # our own processes (growth judged); the others are the infrastructure and the stand-in
    ours: set[str] = field(default_factory=set)

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for name, p in self.procs.items():
            try:
                out[name] = p.memory_info().rss / 2**20
            except psutil.Error:
                out[name] = float("nan")
        return out


class Client:
    """One keep-alive connection to the gateway, recording every answer as a Sample."""

    def __init__(self, base: str, samples: list[Sample], t0: float) -> None:
        parts = urlsplit(base)
        assert parts.hostname and parts.port
        self.host, self.port = parts.hostname, parts.port
        self.samples = samples
        self.t0 = t0
        self.conn: _Connection | None = None

    async def call(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        body = raw if raw is not None else (b"" if json_body is None else orjson.dumps(json_body))
        lines = [f"{method} {path} HTTP/1.1", f"host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if json_body is not None or raw is not None:
            lines.append("content-type: application/json")
        if body or method not in ("GET", "HEAD"):
            lines.append(f"content-length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        start = time.perf_counter()
        try:
            if self.conn is None or self.conn.closed:
                loop = asyncio.get_running_loop()
                _, self.conn = await loop.create_connection(_Connection, self.host, self.port)
            status, answer = await asyncio.wait_for(self.conn.request(data), 120)
        except (OSError, httptools.HttpParserError, TimeoutError):
            self.conn = None
            status, answer = 0, b""
        ms = (time.perf_counter() - start) * 1000
        self.samples.append(Sample(start - self.t0, kind, status, ms))
        return status, answer

    def close(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()


@dataclass
class Credentials:
    email: str
    password: str
    access: str
    refresh: str
    key: str


def sign_up(gateway: str) -> Credentials:
    """An account, its tokens and an API key (through the gateway, as a client would)."""
    email = f"soak-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(16)
    with httpx.Client(base_url=gateway, timeout=30) as client:
        client.post("/v1/auth/register", json={"email": email, "password": password})
        r = client.post("/v1/auth/login", json={"email": email, "password": password})
        r.raise_for_status()
        pair = r.json()
        r = client.post(
            "/v1/api-keys",
            json={"name": "soak", "scopes": ["llm:use"]},
            headers={"authorization": f"Bearer {pair['access_token']}"},
        )
        r.raise_for_status()
        return Credentials(
            email, password, pair["access_token"], pair["refresh_token"], r.json()["key"]
        )


async def _loop(until: float, step: Callable[[], Awaitable[None]]) -> None:
    while time.monotonic() < until:
        await step()


async def drive(
    gateway: str, creds: Credentials, duration: float, chat_clients: int
) -> tuple[list[Sample], float]:
    """Run every client for ``duration`` seconds; the samples and the load's start (monotonic)."""
    samples: list[Sample] = []
    t0 = time.perf_counter()
    began = time.monotonic()
    until = began + duration
    key = {"authorization": f"Bearer {creds.key}"}
    clients: list[Client] = []

    def client() -> Client:
        c = Client(gateway, samples, t0)
        clients.append(c)
        return c

    def chat_step(c: Client) -> Callable[[], Awaitable[None]]:
        async def step() -> None:
            await c.call("chat", "POST", "/v1/chat/completions", json_body=CHAT, headers=key)

        return step

    stream_client = client()

    async def stream_step() -> None:
        await stream_client.call(
            "chat stream",
            "POST",
            "/v1/chat/completions",
            json_body={**CHAT, "stream": True},
            headers=key,
        )

    embed_client = client()

    async def embed_step() -> None:
        await embed_client.call(
            "embeddings", "POST", "/v1/embeddings", json_body={"model": "embed", "input": "hi"},
            headers=key,
        )  # fmt: skip

    auth_client = client()
    state = {"round": 0, "login_at": time.monotonic(), "key_at": time.monotonic()}

    async def auth_step() -> None:
        state["round"] += 1
        bearer = {"authorization": f"Bearer {creds.access}"}
        await auth_client.call("auth: me (access token)", "GET", "/v1/auth/me", headers=bearer)
        if state["round"] % 3 == 0:
            status, body = await auth_client.call(
                "auth: refresh", "POST", "/v1/auth/refresh",
                json_body={"refresh_token": creds.refresh},
            )  # fmt: skip
            if status == 200:
                pair = orjson.loads(body)
                creds.access, creds.refresh = pair["access_token"], pair["refresh_token"]
        now = time.monotonic()
        if now - state["login_at"] >= 10:
            state["login_at"] = now
            await auth_client.call(
                "auth: login", "POST", "/v1/auth/login",
                json_body={"email": creds.email, "password": creds.password},
            )  # fmt: skip
        if now - state["key_at"] >= 15:
            state["key_at"] = now
            await key_churn(bearer)
        await asyncio.sleep(0.25)

    async def key_churn(bearer: dict[str, str]) -> None:
        status, body = await auth_client.call(
            "auth: create API key", "POST", "/v1/api-keys",
            json_body={"name": "churn", "scopes": ["llm:use"]}, headers=bearer,
        )  # fmt: skip
        if status != 201:
            return
        made = orjson.loads(body)
        fresh = {"authorization": f"Bearer {made['key']}"}
        await auth_client.call("auth: new API key resolved", "GET", "/v1/models", headers=fresh)
        await auth_client.call(
            "auth: revoke API key", "DELETE", f"/v1/api-keys/{made['id']}", headers=bearer
        )
        # the revocation reaches the gateway by a message; it may take a moment
        await asyncio.sleep(1.0)
        await auth_client.call("error: revoked API key", "GET", "/v1/models", headers=fresh)

    error_client = client()
    unknown_key = "ask_" + secrets.token_urlsafe(30).replace("-", "x")

    async def error_step() -> None:
        c = error_client
        await c.call(
            "error: body not JSON", "POST", "/v1/chat/completions", raw=b"{not json", headers=key
        )
        await c.call(
            "error: chat without messages", "POST", "/v1/chat/completions",
            json_body={"model": "default"}, headers=key,
        )  # fmt: skip
        await c.call(
            "error: unknown model", "POST", "/v1/chat/completions",
            json_body={**CHAT, "model": "no-such-model"}, headers=key,
        )  # fmt: skip
        await c.call(
            "error: unknown conversation", "GET", f"/v1/conversations/{uuid.uuid4()}", headers=key
        )
        await c.call(
            "error: unknown API key", "GET", "/v1/models",
            headers={"authorization": f"Bearer {unknown_key}"},
        )  # fmt: skip
        await c.call("error: malformed API key", "GET", "/v1/models", headers={"x-api-key": "x"})
        await c.call("error: unknown path", "GET", "/v1/no-such-thing", headers=key)
        await asyncio.sleep(0.05)

    tasks = [
        *(_loop(until, chat_step(client())) for _ in range(chat_clients)),
        _loop(until, stream_step),
        _loop(until, embed_step),
        _loop(until, auth_step),
        _loop(until, error_step),
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for c in clients:
            c.close()
    return samples, began


def scrape(url: str) -> float:
    """One scrape of a metrics listener, in ms (as Prometheus would make it)."""
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as resp:
        resp.read()
    return (time.perf_counter() - start) * 1000


async def watch(
    procs: Processes, began: float, duration: float, window: float
) -> tuple[list[tuple[float, dict[str, float]]], dict[str, list[float]]]:
    """RSS of every process at every window's end; scrape times of every metrics listener."""
    rss: list[tuple[float, dict[str, float]]] = [(0.0, procs.rss_mb())]
    scrapes: dict[str, list[float]] = {name: [] for name in procs.metrics}
    ends = [min(duration, window * i) for i in range(1, int(duration // window) + 2)]
    for end in sorted(set(ends)):
        while (left := began + end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 15.0))
            for name, url in procs.metrics.items():
                scrapes[name].append(await asyncio.to_thread(scrape, url))
        rss.append((end, procs.rss_mb()))
    return rss, scrapes


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    return data[max(0, min(len(data) - 1, round(q / 100 * (len(data) - 1))))]


def expected(kind: str, status: int) -> bool:
    if kind in ERRORS:
        return status == ERRORS[kind]
    return status in (200, 201, 204)


def report(
    samples: list[Sample],
    rss: list[tuple[float, dict[str, float]]],
    scrapes: dict[str, list[float]],
    procs: Processes,
    duration: float,
    warmup: float,
    window: float,
) -> tuple[str, bool]:
    lines: list[str] = []
    deliberate = [s for s in samples if s.kind in ERRORS]
    server_errors = [s for s in samples if s.status >= 500]
    failed = [s for s in samples if s.status == 0]
    unexpected = [
        s for s in samples if s.status and s.status < 500 and not expected(s.kind, s.status)
    ]
    lines += [
        f"{len(samples):,} requests in {duration:.0f} s ({len(samples) / duration:,.0f}/s): "
        f"**{len(server_errors)} 5xx**, {len(deliberate):,} deliberate 4xx "
        f"({len(deliberate) / len(samples):.1%}), {len(unexpected)} unexpected statuses, "
        f"{len(failed)} connection failures.",
        "",
        "| Window (s) | Requests | Requests/s | 5xx | Deliberate 4xx | Other 4xx | p50 ms | "
        "p99 ms | p99 chat | p99 stream | p99 embeddings |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    start = 0.0
    while start < duration - 0.5:
        end = min(duration, start + window)
        inside = [s for s in samples if start <= s.at < end]
        ok = [s.ms for s in inside if s.kind not in ERRORS]

        def p99(kind: str, inside: list[Sample] = inside) -> str:
            return f"{pct([s.ms for s in inside if s.kind == kind], 99):.1f}"

        lines.append(
            f"| {start:.0f}-{end:.0f} | {len(inside):,} | {len(inside) / (end - start):,.0f} "
            f"| {sum(s.status >= 500 for s in inside)} "
            f"| {sum(s.kind in ERRORS for s in inside):,} "
            f"| {sum(400 <= s.status < 500 and s.kind not in ERRORS for s in inside)} "
            f"| {pct(ok, 50):.1f} | {pct(ok, 99):.1f} | {p99('chat')} | {p99('chat stream')} "
            f"| {p99('embeddings')} |"
        )
        start = end
    # by kind: count, statuses seen, p99
    lines += ["", "| Request | Count | Statuses | p50 ms | p99 ms |", "|---|---:|---|---:|---:|"]
    kinds: dict[str, list[Sample]] = {}
    for s in samples:
        kinds.setdefault(s.kind, []).append(s)
    for kind, group in kinds.items():
        statuses: dict[int, int] = {}
        for s in group:
            statuses[s.status] = statuses.get(s.status, 0) + 1
        seen = ", ".join(f"{code}: {n:,}" for code, n in sorted(statuses.items()))
        ms = [s.ms for s in group]
        lines.append(
            f"| {kind} | {len(group):,} | {seen} | {pct(ms, 50):.1f} | {pct(ms, 99):.1f} |"
        )
    # memory
    at_warm = min(rss, key=lambda r: abs(r[0] - warmup))
    names = list(procs.procs)
    lines += [
        "",
        f"RSS (MiB) at the start of the load, after the warm-up ({at_warm[0]:.0f} s) and at "
        "every window's end; growth from the warm-up to the end:",
        "",
        "| Process | " + " | ".join(f"{t:.0f} s" for t, _ in rss) + " | Growth after warm-up |",
        "|---|" + "---:|" * (len(rss) + 1),
    ]
    grew: list[str] = []
    for name in names:
        values = [r[name] for _, r in rss]
        base, last = at_warm[1][name], values[-1]
        growth = (last - base) / base * 100 if base else float("nan")
        mark = "" if name in procs.ours else " (not aistack)"
        if name in procs.ours and growth >= GROWTH_LIMIT_PCT:
            grew.append(name)
        cells = " | ".join(f"{v:.0f}" for v in values)
        lines.append(f"| {name}{mark} | {cells} | {growth:+.1f} % |")
    if scrapes:
        lines += [
            "",
            "| Metrics scrape during the load | Scrapes | median ms | max ms |",
            "|---|---:|---:|---:|",
        ]
        for name, times in scrapes.items():
            if times:
                lines.append(
                    f"| {name} | {len(times)} | {statistics.median(times):.1f} | {max(times):.1f} |"
                )
    passed = not server_errors and not unexpected and not failed and not grew
    verdict = "PASS" if passed else "FAIL"
    why = []
    if server_errors:
        why.append(f"{len(server_errors)} 5xx")
    if unexpected:
        why.append(f"{len(unexpected)} unexpected statuses")
    if failed:
        why.append(f"{len(failed)} connection failures")
    if grew:
        why.append(
            f"RSS grew {GROWTH_LIMIT_PCT:.0f} % or more after the warm-up: {', '.join(grew)}"
        )
    summary = "; ".join(why) or (
        f"no 5xx, every status as expected, no aistack process grew {GROWTH_LIMIT_PCT:.0f} % "
        "after the warm-up"
    )
    lines += ["", f"**{verdict}**: {summary}"]
    return "\n".join(lines), passed


def models_yaml(upstream: str, folder: Path) -> Path:
    path = folder / "models.yaml"
    fake = {"kind": "openai", "base_url": f"{upstream}/v1", "api_key": "sk-soak"}
    path.write_text(
        json.dumps(
            {
                "providers": {"fake": {**fake, "http_pool": "aiohttp"}},
                "models": {
                    "default": {
                        "price": {"input": 0.15, "output": 0.6},
                        "targets": [{"provider": "fake", "model": "gpt-4o-mini"}],
                    },
                    "embed": {
                        "type": "embedding",
                        "targets": [{"provider": "fake", "model": "text-embedding-3-small"}],
                    },
                },
            }
        )
    )
    return path


def start(s: Stack, folder: Path) -> tuple[Proc, Processes]:
    s.env.update(ENV)
    upstream = s.start_fake_openai()
    auth = s.start("auth", "services.auth.app:app", metrics_prefix="AUTH")
    llm = s.start(
        "llm",
        "services.llm.app:app",
        env={"LLM_MODELS_CONFIG": str(models_yaml(upstream.url, folder))},
        metrics_prefix="LLM",
    )
    gateway = s.start(
        "gateway",
        "gateway.app:app",
        env={"GATEWAY_AUTH_URL": auth.url, "GATEWAY_LLM_URL": llm.url},
        metrics_prefix="GATEWAY",
    )
    workers = [s.start_worker("billing"), s.start_worker("jobs")]
    ours = [gateway, auth, llm, *workers]
    procs: dict[str, psutil.Process] = {p.name: psutil.Process(p.popen.pid) for p in ours}
    for child in psutil.Process().children(recursive=True):
        if "redis" in child.name():
            procs["redis"] = child
        elif child.name() in ("postgres", "postgres.exe") and "postgres" not in procs:
            procs["postgres"] = child  # the postmaster: its backends come and go
    pg = s.infra.postgres
    if "postgres" not in procs and pg is not None:
        # the postmaster (its backends come and go), from its pid file
        pid_file = pg.data_dir / "pgdata" / "postmaster.pid"
        if pid_file.exists():
            procs["postgres"] = psutil.Process(int(pid_file.read_text().split()[0]))
    procs["fake upstream"] = psutil.Process(upstream.popen.pid)
    metrics = {p.name: p.metrics_url for p in ours if p.metrics_url}
    return gateway, Processes(procs, metrics, {p.name for p in ours})


def redis_keys(url: str) -> str:
    """What Redis holds at the end, by key prefix (what its growth is made of)."""
    from redis import Redis

    client = Redis.from_url(url)
    try:
        counts: dict[str, int] = {}
        for key in client.scan_iter(count=1000):
            text = key.decode(errors="replace")
            parts = text.split(":")
            prefix = ":".join(parts[:3]) if len(parts) > 3 else text
            counts[prefix] = counts.get(prefix, 0) + 1
        memory = cast(dict[str, Any], client.info("memory"))
        used = int(memory["used_memory"]) / 2**20
    finally:
        client.close()
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
    listed = ", ".join(f"`{prefix}`… {n:,}" for prefix, n in top)
    return f"Redis at the end: {used:.1f} MiB used, {sum(counts.values()):,} keys; most: {listed}."


def idle_scrapes(procs: Processes) -> dict[str, float]:
    """The median of five scrapes of each listener once the load has stopped: the cost of
    rendering the exposition itself, without waiting for a busy event loop's GIL."""
    return {
        name: statistics.median(scrape(url) for _ in range(5))
        for name, url in procs.metrics.items()
    }


def run_soak(duration: float, warmup: float, window: float, chat_clients: int) -> tuple[str, bool]:
    with stack() as s, tempfile.TemporaryDirectory() as tmp:
        gateway, procs = start(s, Path(tmp))
        creds = sign_up(gateway.url)

        async def both() -> tuple[list[Sample], Any]:
            load = asyncio.ensure_future(drive(gateway.url, creds, duration, chat_clients))
            await asyncio.sleep(0)
            watcher = asyncio.ensure_future(watch(procs, time.monotonic(), duration, window))
            samples, _ = await load
            return samples, await watcher

        samples, (rss, scrapes) = uvloop.run(both())
        text, passed = report(samples, rss, scrapes, procs, duration, warmup, window)
        idle = idle_scrapes(procs)
        text += "\n\nScrape after the load (median of 5, ms): " + ", ".join(
            f"{name} {ms:.1f}" for name, ms in idle.items()
        )
        text += "\n\n" + redis_keys(s.infra.redis_url)
        head = (
            f"Soak: {duration:.0f} s, warm-up {warmup:.0f} s, windows of {window:.0f} s; "
            f"{chat_clients + 4} closed-loop clients ({chat_clients} chat, 1 stream, 1 "
            f"embeddings, 1 auth, 1 errors); {platform.python_version()}, "
            f"{psutil.cpu_count()} CPUs.\n\n"
        )
        return head + text, passed


def main() -> None:
    parser = argparse.ArgumentParser(prog="make soak")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before RSS counts")
    parser.add_argument("--window", type=float, default=None, help="seconds per report row")
    parser.add_argument("--chat-clients", type=int, default=2)
    args = parser.parse_args()
    duration = args.duration
    warmup = args.warmup if args.warmup is not None else max(15.0, min(60.0, duration / 5))
    window = args.window if args.window is not None else max(10.0, duration / 10)
    text, passed = run_soak(duration, warmup, window, args.chat_clients)
    print(text, flush=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
