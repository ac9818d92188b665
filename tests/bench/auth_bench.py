"""What authentication and rate limiting cost at the gateway.

The same trivial upstream behind the same gateway process, reached three ways:

- anonymous: ``GET /v1/billing/webhooks/bench`` (a public route: no credentials, no limits);
- API key: ``GET /v1/billing/bench`` with a cached key (introspected once at the real auth
  service, then in-process and Redis cache), scope check, three-limit check in Redis, signed
  internal token;
- access token: the same with an EdDSA JWT verified against the cached JWKS.

Every process is a real one (uvicorn, one worker, uvloop, libs.server's protocol) on loopback, on
embedded PostgreSQL and Redis; the load generator shares the machine.

    python -m tests.bench.auth_bench [--duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from typing import Any

import httpx

from tests.bench import load
from tests.bench.stack import stack

# generous limits: the benchmark measures their cost, not the limiter refusing requests
LIMITS = {
    "GATEWAY_RATE_LIMIT_KEY_RPM": "100000000",
    "GATEWAY_RATE_LIMIT_USER_RPM": "100000000",
    "GATEWAY_RATE_LIMIT_ORG_RPM": "100000000",
}
_BODY = b'{"ok":true}'


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A trivial service: 200 and a tiny JSON body for any request."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
        }
    )
    await send({"type": "http.response.body", "body": _BODY})


def credentials(gateway: str) -> tuple[str, str]:
    """Sign up through the gateway: an access token, and an API key with ``billing:read``."""
    email = f"bench-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(16)
    with httpx.Client(base_url=gateway, timeout=30) as client:
        r = client.post("/v1/auth/register", json={"email": email, "password": password})
        r.raise_for_status()
        r = client.post("/v1/auth/login", json={"email": email, "password": password})
        r.raise_for_status()
        token = str(r.json()["access_token"])
        r = client.post(
            "/v1/api-keys",
            json={"name": "bench", "scopes": ["billing:read"]},
            headers={"authorization": f"Bearer {token}"},
        )
        r.raise_for_status()
        key = str(r.json()["key"])
        # warm the caches and prove every way in works before measuring
        for path, headers in (
            ("/v1/billing/webhooks/bench", {}),
            ("/v1/billing/bench", {"x-api-key": key}),
            ("/v1/billing/bench", {"authorization": f"Bearer {token}"}),
        ):
            r = client.get(path, headers=headers)
            assert r.status_code == 200, (path, r.status_code, r.text)
    return token, key


async def measure(gateway: str, token: str, key: str, duration: float) -> list[load.Result]:
    ways = [
        ("anonymous (public route)", "/v1/billing/webhooks/bench", {}),
        ("API key (cached)", "/v1/billing/bench", {"authorization": f"Bearer {key}"}),
        ("access token (EdDSA JWT)", "/v1/billing/bench", {"authorization": f"Bearer {token}"}),
    ]
    results = []
    for concurrency in (1, 16):
        for name, path, headers in ways:
            results.append(
                await load.run(
                    name,
                    gateway + path,
                    headers=headers,
                    concurrency=concurrency,
                    duration=duration,
                )
            )
    return results


def report(results: list[load.Result]) -> str:
    base = {r.concurrency: r for r in results if r.name.startswith("anonymous")}
    lines = [
        "| Request | Concurrency | Requests/s | p50 ms | p99 ms | added p50 ms | Errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        added = r.p50 - base[r.concurrency].p50
        row = f"| {r.name} | {r.concurrency} | {r.rps:,.0f} | {r.p50:.2f} | {r.p99:.2f}"
        lines.append(f"{row} | {added:+.2f} | {r.errors} |")
    return "\n".join(lines)


def run_bench(duration: float) -> str:
    with stack() as s:
        trivial = s.start("upstream", "tests.bench.auth_bench:upstream", factory=False)
        auth = s.start("auth", "services.auth.app:app")
        gateway = s.start(
            "gateway",
            "gateway.app:app",
            env={"GATEWAY_AUTH_URL": auth.url, "GATEWAY_BILLING_URL": trivial.url, **LIMITS},
        )
        token, key = credentials(gateway.url)
        return report(asyncio.run(measure(gateway.url, token, key, duration)))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.auth_bench")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    args = parser.parse_args()
    print(run_bench(args.duration))


if __name__ == "__main__":
    main()
