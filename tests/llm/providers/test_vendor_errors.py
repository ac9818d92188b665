"""Vendor errors as OpenAI's, through the llm app over each vendor's fake (real HTTP), called
with the real ``openai`` SDK."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from tests.support.stacks.llm import Env, Upstream
from tests.support.stacks.vendors import (
    MESSAGES,
    Case,
    stream_payload,
)

# ------------------------------------------------------------------------------ errors


async def test_vendor_429_is_a_rate_limit_error(venv: Env, case: Case) -> None:
    case.behavior.status = 429
    case.behavior.error_message = "slow down please"
    case.behavior.retry_after = "30"  # longer than we wait: no retry of the same target
    with pytest.raises(openai.RateLimitError) as exc:
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert exc.value.status_code == 429
    assert exc.value.code == "upstream_rate_limited"
    assert "slow down please" in exc.value.message
    assert exc.value.response.headers["retry-after"] == "30"
    assert len(case.chat_requests()) == 1
    events = await venv.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"
    assert events[0]["prompt_tokens"] == 0 and Decimal(events[0]["cost_usd"]) == 0

    with pytest.raises(openai.RateLimitError):
        await venv.client.chat.completions.create(
            model=case.vendor.alias, messages=MESSAGES, stream=True
        )


async def test_vendor_429_without_hint_is_retried_once(venv: Env, case: Case) -> None:
    case.behavior.status = 429
    with pytest.raises(openai.RateLimitError):
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert len(case.chat_requests()) == 2  # settings: retries=1


async def test_vendor_401_is_our_credentials_problem_not_the_callers(venv: Env, case: Case) -> None:
    """A vendor rejecting aistack's key is a gateway failure (502), never a 401 that would
    tell the caller their own key is wrong."""
    case.behavior.status = 401
    case.behavior.error_message = "invalid x-api-key"
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_auth_failed"
    assert len(case.chat_requests()) == 1, "not retried"
    events = await venv.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"


async def test_azure_wrong_key_is_a_502(venv: Env) -> None:
    # the real path to an Azure 401: the fake checks the api-key header
    provider = venv.service.providers["azure"]
    provider.client.headers["api-key"] = "wrong"  # type: ignore[attr-defined]
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model="az", messages=MESSAGES)
    assert exc.value.code == "upstream_auth_failed"
    assert "Access denied" in exc.value.message


@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_wrong_key_is_our_credentials_problem(venv: Env, stream: bool) -> None:
    """Google answers a wrong API key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID): that
    is aistack's misconfiguration, not a bad request, so the next target gets a chance and the
    caller never reads "API key not valid" as a verdict on their own key."""
    provider = venv.service.providers["gemini"]
    provider.client.headers["x-goog-api-key"] = "AIza-revoked"  # type: ignore[attr-defined]
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model="gem", messages=MESSAGES, stream=stream)
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_auth_failed"
    assert "API key not valid" in exc.value.message

    raw = await venv.client.chat.completions.with_raw_response.create(
        model="gem-then-az", messages=MESSAGES, stream=stream
    )
    assert raw.headers["x-aistack-provider"] == "azure"
    assert raw.headers["x-aistack-fallbacks"] == "1"


@pytest.mark.parametrize(
    ("status", "code"), [(403, "upstream_auth_failed"), (404, "upstream_not_found")]
)
async def test_vendor_403_and_404_are_configuration_problems(
    venv: Env, case: Case, status: int, code: str
) -> None:
    """A vendor refusing the account (403) or not knowing the routed model (404: an Ollama
    model not pulled, a deleted Azure deployment) is the gateway's 502, not retried."""
    case.behavior.status = status
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert exc.value.status_code == 502
    assert exc.value.code == code
    assert len(case.chat_requests()) == 1


async def test_anthropic_overloaded_is_retried_then_a_503(
    venv: Env, upstreams: dict[str, Upstream]
) -> None:
    anthropic = upstreams["anthropic"]
    anthropic.behavior.status = 529
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model="claude", messages=MESSAGES)
    # overloaded, not broken: 503, which clients retry later
    assert exc.value.status_code == 503
    assert exc.value.code == "upstream_overloaded"
    assert "overloaded_error" in exc.value.message
    assert len(anthropic.behavior.requests) == 2


async def test_slow_vendor_times_out(venv: Env, case: Case) -> None:
    case.behavior.delay = 1.0
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as exc:
            await venv.client.chat.completions.create(
                model=case.vendor.alias,
                messages=MESSAGES,
                stream=stream,
                extra_headers={"x-aistack-timeout": "0.2"},
            )
        assert exc.value.status_code == 504


@pytest.mark.parametrize("alias", ["claude", "llama"])
async def test_n_above_one_is_refused_where_the_vendor_has_one_choice(
    venv: Env, upstreams: dict[str, Upstream], alias: str
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await venv.client.chat.completions.create(model=alias, messages=MESSAGES, n=2)
    assert "n must be 1" in exc.value.message
    assert all(not u.behavior.requests for u in upstreams.values())
    events = await venv.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"


async def test_vendor_400_is_a_bad_request_with_the_vendors_message(venv: Env, case: Case) -> None:
    case.behavior.status = 400
    case.behavior.error_message = "prompt is too long: 300000 tokens > 200000 maximum"
    with pytest.raises(openai.BadRequestError) as exc:
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert "prompt is too long" in exc.value.message
    assert len(case.chat_requests()) == 1, "a request error is not retried"


async def test_vendor_5xx_is_retried_then_a_502(venv: Env, case: Case) -> None:
    case.behavior.status = 500
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert exc.value.status_code == 502
    assert len(case.chat_requests()) == 2


async def test_vendor_stream_breaking_midway_reports_in_band(venv: Env, case: Case) -> None:
    # cut the vendor's stream two thirds of the way in: after the first chunks, before the end
    case.behavior.break_after = len(stream_payload(case)) * 2 // 3
    stream = await venv.client.chat.completions.create(
        model=case.vendor.alias, messages=MESSAGES, stream=True
    )
    got = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            got.append(chunk)
    assert got, "bytes reached the client before the break"
    assert "Upstream stream failed" in exc.value.message
    events = await venv.usage_events()
    assert len(events) == 1 and events[0]["status"] == "error"


async def test_malformed_vendor_answer_is_a_502(venv: Env, case: Case) -> None:
    case.behavior.malformed = True
    with pytest.raises(openai.InternalServerError) as exc:
        await venv.client.chat.completions.create(model=case.vendor.alias, messages=MESSAGES)
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_bad_response"
