"""Every operation of the merged OpenAPI document, fuzzed through the gateway of a real stack.

Schemathesis generates requests from the document the gateway serves (valid ones and, in its
negative mode, wrong types, oversized numbers, odd Unicode, missing fields) and sends them to
real processes (every service and the gateway, on the test session's PostgreSQL and Redis;
the llm's models on a fast fake OpenAI upstream) as an organization owner's API key with every
scope. No request may make any process answer 5xx, and every answer must match the document.
The seed and the number of examples are fixed, so a run is repeatable.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.permissions import Scope
from libs.registry import NAMES
from libs.testing import Infra
from tests.bench.llm_bench import models_yaml
from tests.bench.stack import Stack

SEED = 20261207
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
LIMITS = {
    "GATEWAY_RATE_LIMIT_KEY_RPM": "100000000",
    "GATEWAY_RATE_LIMIT_USER_RPM": "100000000",
    "GATEWAY_RATE_LIMIT_ORG_RPM": "100000000",
    "GATEWAY_RATE_LIMIT_AUTH_FAILURES": "0",
    "AUTH_LOGIN_FAILURES_PER_IP": "100000000",
    "AUTH_LOGIN_FAILURES_PER_ACCOUNT": "100000000",
    "LLM_TPM_LIMIT": "0",
    # organizations' plans (billing publishes them; the gateway and llm apply their limits)
    "BILLING_PLANS_CONFIG": str(Path(__file__).parents[1] / "support" / "plans_unlimited.yaml"),
}


@pytest.fixture(scope="module")
def gateway(infra: Infra) -> Iterator[str]:
    """The whole stack as real processes; the gateway's URL."""
    with tempfile.TemporaryDirectory(prefix="aistack-fuzz-") as tmp:
        env = {
            **os.environ,
            "DATABASE_URL": infra.database_url,
            "REDIS_URL": infra.redis_url,
            "ENVIRONMENT": "development",
            "LOG_LEVEL": "WARNING",
            "LOG_JSON": "false",
            "PYTHONUNBUFFERED": "1",
            "AUTH_PLATFORM_ADMIN_EMAILS": json.dumps([ADMIN_EMAIL]),
            **LIMITS,
        }
        stack = Stack(infra, env, Path(tmp))
        try:
            upstream = stack.start_fake_openai()
            config = models_yaml(upstream.url, Path(tmp))
            urls: dict[str, str] = {}
            for name in NAMES:
                extra = {"LLM_MODELS_CONFIG": str(config)} if name == "llm" else {}
                if name == "jobs":  # it calls auth, llm and rag (started before it)
                    extra = {
                        f"JOBS_{other.upper()}_URL": urls[f"GATEWAY_{other.upper()}_URL"]
                        for other in ("auth", "llm", "rag")
                    }
                    # the live notification stream ends at once (it would outlast each case)
                    extra["JOBS_NOTIFICATION_STREAM_MAX_S"] = "0.5"
                urls[f"GATEWAY_{name.upper()}_URL"] = stack.start(
                    name, f"services.{name}.app:app", env=extra
                ).url
            yield stack.start("gateway", "gateway.app:app", env=urls).url
        finally:
            stack.procs.pop("fake-openai", None)
            for proc in stack.procs.values():
                proc.popen.terminate()
            for proc in stack.procs.values():
                proc.popen.wait(10)
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text()[-4000:]}" for p in Path(tmp).glob("*.log")
            )
            print(logs)


# the operations of the accounts' own API, fuzzed with a user's access token (an API key may
# not manage accounts); those that would end the fuzzing session are left to the key's run
ACCOUNT_PATHS = r"^/v1/(auth|orgs|api-keys|admin)(/|$)"
ENDS_SESSION = r"^/v1/auth/(logout|logout-all|password/change|sessions/.+)$"
ADMIN_EMAIL = f"fuzz-{secrets.token_hex(4)}@example.com"
PASSWORD = secrets.token_urlsafe(16)


def credentials(gateway: str, *, key: bool = True) -> tuple[str, str]:
    """An access token and (``key``) an API key with every scope, of the fuzzing account: it
    owns its organization and is a platform administrator (registered on first use)."""
    with httpx.Client(base_url=gateway, timeout=30) as client:
        client.post("/v1/auth/register", json={"email": ADMIN_EMAIL, "password": PASSWORD})
        login = client.post("/v1/auth/login", json={"email": ADMIN_EMAIL, "password": PASSWORD})
        login.raise_for_status()
        token = login.json()["access_token"]
        if not key:
            return token, ""
        created = client.post(
            "/v1/api-keys",
            json={"name": "fuzz", "scopes": [s.value for s in Scope]},
            headers={"authorization": f"Bearer {token}"},
        )
        created.raise_for_status()
        return token, str(created.json()["key"])


def schemathesis_run(gateway: str, secret: str, filters: list[str], out: Path) -> dict[str, Any]:
    """Run schemathesis over the operations ``filters`` select; its JSON report."""
    report = out.with_suffix(".json")
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{gateway}/openapi.json",
        "--checks", "not_a_server_error,response_schema_conformance",
        "--max-examples", str(EXAMPLES),
        "--seed", str(SEED),
        "--generation-database", "none",
        "--workers", "2",
        "--request-timeout", "30",
        "--header", f"Authorization: Bearer {secret}",
        "--suppress-health-check", "all",
        "--report", "json", "--report-json-path", str(report),
        "--no-color",
        *filters,
    ]  # fmt: skip
    with out.open("w") as sink:
        # run outside the repository: schemathesis keeps a cache of crashes in its working dir
        subprocess.run(cmd, cwd=out.parent, stdout=sink, stderr=subprocess.STDOUT, timeout=1500)
    print(out.read_text()[-30000:])
    summary: dict[str, Any] = json.loads(report.read_text())
    # what the API answered: no server error, nothing off its document, every operation reached
    assert summary["failures"] == [], f"schemathesis found failures: {out}"
    assert summary["test_cases"]["with_failures"] == 0, out
    assert summary["operations"]["tested"] == summary["operations"]["selected"] > 0, out
    assert summary["operations"]["errored"] == 0, out
    # schemathesis' own generator sometimes trips over itself (a "Runtime Error" inside
    # hypothesis while it builds cases, e.g. CPython 3.11's "AST constructor recursion depth
    # mismatch"); that is not an answer of the API, and every case it did build was checked
    assert {e["title"] for e in summary["errors"]} <= {"Runtime Error"}, out
    return summary


def test_declared_security_matches_what_is_enforced(gateway: str) -> None:
    """Every operation the document publishes as secured refuses a caller without credentials
    (401 ``unauthorized``), and no operation it publishes as open does (it may still refuse
    what was sent, a failed sign-in included): Swagger UI and generated clients send
    credentials exactly where the document says."""
    doc = httpx.get(f"{gateway}/openapi.json", timeout=30).json()
    assert doc["security"]  # the default: a bearer token or an API key
    checked = 0
    with httpx.Client(base_url=gateway, timeout=30) as client:
        for path, item in doc["paths"].items():
            url = re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)
            for method, op in item.items():
                if method not in ("get", "post", "put", "patch", "delete"):
                    continue
                body: dict[str, Any] | None = {} if "requestBody" in op else None
                resp = client.request(method.upper(), url, json=body)
                refused = resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
                declared_open = op.get("security", doc["security"]) == []
                what = f"{method.upper()} {path}: declared {'open' if declared_open else 'secured'}"
                assert refused != declared_open, f"{what}, answered {resp.status_code} {resp.text}"
                checked += 1
    assert checked > 50


@pytest.mark.timeout(2400)
def test_no_operation_answers_5xx_or_off_its_schema(gateway: str, tmp_path: Path) -> None:
    token, key = credentials(gateway)
    logs = Path(os.environ.get("FUZZ_LOG_DIR", tmp_path))
    accounts = schemathesis_run(
        gateway,
        token,
        ["--include-path-regex", ACCOUNT_PATHS, "--exclude-path-regex", ENDS_SESSION],
        logs / "fuzz-accounts.log",
    )
    rest = schemathesis_run(
        gateway, key, ["--exclude-path-regex", ACCOUNT_PATHS], logs / "fuzz-rest.log"
    )
    # last, what ends the session it runs with (a logout answers the later cases with 401s)
    token, _ = credentials(gateway, key=False)
    ending = schemathesis_run(
        gateway, token, ["--include-path-regex", ENDS_SESSION], logs / "fuzz-ending.log"
    )
    runs = (accounts, rest, ending)
    sent = sum(r["test_cases"]["generated"] for r in runs)
    tested = sum(r["operations"]["tested"] for r in runs)
    print(f"fuzz: {sent} requests over {tested} operations, no server error")
    assert tested == accounts["operations"]["total"]  # every operation of the document
