"""The official openai **Node** SDK (``tests/gateway/node_sdk``, the version pinned in its
package.json) against the gateway in front of the real llm service, with an aistack API key:
what a Node user calls — chat (plain, tools, streams, the ``stream``/``runTools`` helpers),
embeddings (the SDK's default base64), models, legacy completions, the Responses API — and
the errors and request ids it hands over. One node process runs every check
(``sdk_check.mjs``) and prints one JSON document that the tests below read."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from libs.testing import Infra
from tests.support.fakes import openai_fake
from tests.support.fakes.vendor_common import Behavior, Reply, ToolCall
from tests.support.fakes.vendor_common import serve as serve_thread
from tests.support.stacks.llm import LlmStack, Upstream, openai_behind_gateway

NODE_DIR = Path(__file__).parent / "node_sdk"
REPLY = Reply().text
TOOL_REPLY = Reply(text="", tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
BREAK_AFTER = 800  # bytes of the fake's stream: its first chunks
JSON_REPLY = Reply(text=json.dumps({"city": "Paris", "forecast": "sunny"}))
VECTORS = [[0.5, -0.25, 0.125, 1.0, 2.0, -3.5], [1.5, 0.0, -1.0, 0.25, 0.75, 4.0]] * 2


class ToolUsingModel(Behavior):
    """The fake OpenAI model as a tool-using one: offered tools and no tool result yet, it
    calls ``get_weather``; asked for a JSON schema, it answers in JSON; otherwise in text (so
    ``runTools`` ends)."""

    @property
    def reply(self) -> Reply:
        body = self.requests[-1]["json"] if self.requests else {}
        messages = body.get("messages") or []
        if body.get("tools") and not any(m.get("role") == "tool" for m in messages):
            return TOOL_REPLY
        if (body.get("response_format") or {}).get("type") == "json_schema":
            return JSON_REPLY
        return self._reply

    @reply.setter
    def reply(self, value: Reply) -> None:
        self._reply = value

    @property
    def break_after(self) -> int | None:
        """Asked to (a message that says BREAK), it drops a stream after its first events."""
        body = self.requests[-1]["json"] if self.requests else {}
        said = json.dumps(body.get("messages") or [])
        return BREAK_AFTER if "BREAK" in said else self._break_after

    @break_after.setter
    def break_after(self, value: int | None) -> None:
        self._break_after = value


@dataclass
class NodeRun:
    out: dict[str, Any]
    stack: LlmStack
    upstream: Upstream

    def __getitem__(self, check: str) -> Any:
        return self.out[check]

    def threw(self, check: str) -> dict[str, Any]:
        result = self.out[check]
        assert "threw" in result, f"{check} did not raise: {result}"
        error: dict[str, Any] = result["threw"]
        return error

    def ok(self, check: str) -> dict[str, Any]:
        result: dict[str, Any] = self.out[check]
        assert "threw" not in result, f"{check} raised: {result['threw']}"
        return result


async def _npm_ci(node: str) -> None:
    if (NODE_DIR / "node_modules" / "openai" / "package.json").exists():
        return
    npm = await asyncio.create_subprocess_exec("npm", "ci", "--no-audit", "--no-fund", cwd=NODE_DIR)
    assert await npm.wait() == 0, "npm ci failed in tests/gateway/node_sdk"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    behavior = ToolUsingModel(embeddings=VECTORS)
    with serve_thread(openai_fake.make_app(behavior)) as url:
        yield Upstream(url, behavior)


@pytest.fixture(scope="module")
async def node_run(
    infra: Infra, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[NodeRun]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: these tests run the official openai Node SDK")
    await _npm_ci(node)
    async with openai_behind_gateway(
        infra, tmp_path_factory.mktemp("llm"), upstream, llm={"request_timeout_s": 30}
    ) as stack:
        key, _ = stack.auth.add_api_key()
        limited, _ = stack.auth.add_api_key(rpm_limit=1)
        scoped, _ = stack.auth.add_api_key(scopes=["jobs:read"])
        env = {
            **os.environ,
            "GATEWAY_URL": f"{stack.gateway}/v1",
            "API_KEY": key,
            "LIMITED_KEY": limited,
            "SCOPED_KEY": scoped,
            "BAD_KEY": "ask_" + "n" * 40,
        }
        proc = await asyncio.create_subprocess_exec(
            node,
            "sdk_check.mjs",
            cwd=NODE_DIR,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, stderr.decode()
        yield NodeRun(json.loads(stdout), stack, upstream)


USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def _request_id(value: Any) -> None:
    assert isinstance(value, str) and len(value) == 32 and int(value, 16) >= 0, value


def _usage(usage: dict[str, Any]) -> None:
    assert {k: usage[k] for k in USAGE} == USAGE, usage


def test_chat_completion_and_its_request_id(node_run: NodeRun) -> None:
    chat = node_run.ok("chat")
    assert chat["object"] == "chat.completion" and chat["id"].startswith("chatcmpl-")
    assert (chat["role"], chat["content"], chat["finish_reason"]) == ("assistant", REPLY, "stop")
    _usage(chat["usage"])
    # ``_request_id`` on the result and ``withResponse()``'s are the gateway's x-request-id
    _request_id(chat["request_id"])
    assert chat["request_id"] == chat["with_response_request_id"] == chat["header_request_id"]


def test_tool_calls_come_back_parsed(node_run: NodeRun) -> None:
    call = {"id": "call_fake0000", "name": "get_weather", "arguments": {"city": "Paris"}}
    tools = node_run.ok("chat_tools")
    assert tools["finish_reason"] == "tool_calls" and tools["content"] is None
    assert tools["tool_calls"] == [{**call, "type": "function"}]
    # streamed: the deltas the SDK hands over assemble into the same call
    streamed = node_run.ok("chat_stream_tools")
    assert streamed == {"finish_reason": "tool_calls", "tool_calls": [call]}
    sent = [r["json"] for r in node_run.upstream.behavior.requests if r["json"].get("tools")]
    assert sent and sent[0]["tools"][0]["function"]["name"] == "get_weather"


def test_streamed_chat_with_a_final_usage_chunk(node_run: NodeRun) -> None:
    stream = node_run.ok("chat_stream")
    assert stream["objects"] == ["chat.completion.chunk"] and len(stream["ids"]) == 1
    assert stream["count"] > 3 and stream["text"] == REPLY
    assert stream["finish_reasons"] == ["stop"]
    # stream_options.include_usage: one last chunk with no choices and the usage
    assert stream["usage_only_on_last"] and stream["last_choices"] == []
    _usage(stream["last_usage"])
    _request_id(stream["request_id"])


def test_stream_and_run_tools_helpers(node_run: NodeRun) -> None:
    helper = node_run.ok("chat_stream_helper")
    assert helper["deltas"] > 1 and helper["text"] == helper["content"] == REPLY
    assert helper["finish_reason"] == "stop"
    _usage(helper["usage"])
    for check in ("run_tools", "run_tools_stream"):
        run = node_run.ok(check)
        # the SDK called the tool with the parsed arguments, sent its result, got the answer
        assert run["called"] == [{"city": "Paris"}], check
        assert run["content"] == REPLY, check
        assert run["roles"] == ["user", "assistant", "tool", "assistant"], check
    assert node_run["run_tools"]["completions"] == 2


def test_structured_output_parse_helper(node_run: NodeRun) -> None:
    parsed = node_run.ok("chat_parse")
    assert parsed == {"parsed": {"city": "Paris", "forecast": "sunny"}, "refusal": None}
    formats = [r["json"].get("response_format") for r in node_run.upstream.behavior.requests]
    sent = [f for f in formats if f]
    assert sent and sent[0]["type"] == "json_schema"
    assert sent[0]["json_schema"]["name"] == "weather"


def test_embeddings_in_the_sdks_default_base64(node_run: NodeRun) -> None:
    emb = node_run.ok("embeddings")
    assert emb["object"] == "list" and emb["model"] == "text-embedding-3-small"
    assert emb["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    # the SDK asked for base64 (its default) and decoded it: float arrays of the right length
    assert [i["index"] for i in emb["items"]] == [0, 1, 2]
    assert all(i["is_array"] and i["object"] == "embedding" for i in emb["items"])
    assert [i["vector"] for i in emb["items"]] == VECTORS[:3]
    _request_id(emb["request_id"])
    assert node_run.ok("embeddings_float")["vector"] == VECTORS[0]
    raw = node_run.ok("embeddings_base64_raw")
    assert raw == {"type": "string", "vector": VECTORS[0]}


def test_models_list_and_retrieve(node_run: NodeRun) -> None:
    listed = node_run.ok("models_list")
    assert listed["ids"] == ["default", "embed", "fallback"]
    assert listed["object"] == "list" and listed["has_next_page"] is False
    assert listed["first"]["object"] == "model" and listed["first"]["id"] == "default"
    model = node_run.ok("models_retrieve")
    assert model["id"] == "default" and model["object"] == "model"
    assert model["owned_by"] == "aistack" and isinstance(model["created"], int)


def test_legacy_completions(node_run: NodeRun) -> None:
    completion = node_run.ok("completions")
    assert completion["object"] == "text_completion" and completion["text"] == REPLY
    assert completion["finish_reason"] == "stop"
    _usage(completion["usage"])
    _request_id(completion["request_id"])
    stream = node_run.ok("completions_stream")
    assert stream["text"] == REPLY
    _usage(stream["last_usage"])


def test_responses_api(node_run: NodeRun) -> None:
    response = node_run.ok("responses")
    assert response["object"] == "response" and response["status"] == "completed"
    assert response["output_text"] == REPLY  # the SDK's own convenience over ``output``
    usage = response["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (12, 7, 19)
    _request_id(response["request_id"])
    stream = node_run.ok("responses_stream")
    assert (stream["first"], stream["last"]) == ("response.created", "response.completed")
    assert stream["text"] == stream["completed_text"] == REPLY
    helper = node_run.ok("responses_stream_helper")
    assert helper["deltas"] > 1 and helper["output_text"] == REPLY
    assert helper["status"] == "completed"


def test_stored_responses(node_run: NodeRun) -> None:
    stored = node_run.ok("responses_stored")
    rid = stored["id"]
    assert rid.startswith("resp_") and stored["retrieved_id"] == rid
    assert stored["retrieved_output_text"] == REPLY
    assert stored["next_previous_response_id"] == rid
    # the SDK's auto-pagination (limit 1: one page per item, by ``after``) saw both items
    assert [(i["type"], i["role"], i["text"]) for i in stored["items"]] == [
        ("message", "user", "Say hello"),
        ("message", "user", "and goodbye"),
    ]
    assert len({i["id"] for i in stored["items"]}) == 2 and stored["pages"] == 2
    assert stored["deleted"] == {"id": rid, "object": "response.deleted", "deleted": True}
    gone = stored["after_delete"]
    assert gone["class"] == "NotFoundError" and gone["status"] == 404
    assert (gone["type"], gone["code"]) == ("invalid_request_error", "response_not_found")


# check → (SDK class, status, error.type, error.code, error.param); type and code as OpenAI's
# own API answers where aistack's case has an OpenAI counterpart (an unknown model: 404,
# invalid_request_error, model_not_found)
ERRORS = {
    "error_bad_key": ("AuthenticationError", 401, "authentication_error", "invalid_api_key", None),
    "error_missing_scope": (
        "PermissionDeniedError",
        403,
        "permission_error",
        "insufficient_scope",
        None,
    ),
    "error_unknown_model": (
        "NotFoundError",
        404,
        "invalid_request_error",
        "model_not_found",
        None,
    ),
    "error_unknown_model_retrieve": (
        "NotFoundError",
        404,
        "invalid_request_error",
        "model_not_found",
        None,
    ),
    "error_unknown_model_embeddings": (
        "NotFoundError",
        404,
        "invalid_request_error",
        "model_not_found",
        None,
    ),
    "error_stream_unknown_model": (
        "NotFoundError",
        404,
        "invalid_request_error",
        "model_not_found",
        None,
    ),
    "error_bad_param": (
        "BadRequestError",
        400,
        "invalid_request_error",
        "invalid_request",
        "temperature",
    ),
    "error_bad_type": (
        "BadRequestError",
        400,
        "invalid_request_error",
        "invalid_request",
        "max_tokens",
    ),
    "error_missing_param": (
        "BadRequestError",
        400,
        "invalid_request_error",
        "invalid_request",
        "messages",
    ),
    "error_rate_limited": ("RateLimitError", 429, "rate_limit_error", "rate_limited", None),
}


@pytest.mark.parametrize("check", sorted(ERRORS))
def test_errors_raise_the_sdks_classes(node_run: NodeRun, check: str) -> None:
    err = node_run.threw(check)
    cls, status, type_, code, param = ERRORS[check]
    assert err["isAPIError"] and err["class"] == cls, err
    assert (err["status"], err["type"], err["code"], err["param"]) == (status, type_, code, param)
    # the SDK read the message out of the body (not a dump of it) and kept the request id
    assert err["message"].startswith(f"{status} ") and "{" not in err["message"], err
    _request_id(err["requestID"])


def test_a_stream_broken_upstream_raises_in_the_loop(node_run: NodeRun) -> None:
    # the error arrives in-band (OpenAI's way once the stream has begun): the SDK raises an
    # APIError out of ``for await``, after the text that came before it
    chat = node_run.ok("error_mid_stream")
    assert chat["text"] and REPLY.startswith(chat["text"]) and chat["text"] != REPLY
    err = chat["threw_in_loop"]
    assert err is not None and err["class"] == "APIError" and err["status"] is None
    assert (err["type"], err["code"]) == ("api_error", "upstream_stream_broken")
    assert err["message"].startswith("Upstream stream failed")
    responses = node_run.ok("error_mid_stream_responses")
    assert responses["types"][0] == "response.created"
    assert "response.completed" not in responses["types"]
    err = responses["threw_in_loop"]
    assert err is not None and err["class"] == "APIError"
    assert (err["type"], err["code"]) == ("error", "upstream_stream_broken")


def test_rate_limit_tells_when_to_retry(node_run: NodeRun) -> None:
    err = node_run.threw("error_rate_limited")
    assert "1 requests per 60s" in err["message"]
    # the SDK waits this long before a retry of its own (at most 60 s, else its own backoff)
    assert 1 <= int(err["retryAfter"]) <= 60


def test_nothing_failed_reached_the_upstream(node_run: NodeRun) -> None:
    models = {r["json"].get("model") for r in node_run.upstream.behavior.requests}
    assert "no-such-model" not in models and None not in models
