"""Translation helpers and vendor HTTP plumbing: finish reasons, tool_choice, stop, SSE and
NDJSON parsing under any byte split, Retry-After and status classification."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.llm.providers import _http as vendor_http
from services.llm.providers import _translate as translate
from services.llm.providers.base import ProviderError


@pytest.mark.parametrize(
    ("table", "reason", "has_tools", "expected"),
    [
        (translate.ANTHROPIC_FINISH, "end_turn", False, "stop"),
        (translate.ANTHROPIC_FINISH, "stop_sequence", False, "stop"),
        (translate.ANTHROPIC_FINISH, "max_tokens", False, "length"),
        (translate.ANTHROPIC_FINISH, "tool_use", True, "tool_calls"),
        (translate.ANTHROPIC_FINISH, "refusal", False, "content_filter"),
        (translate.ANTHROPIC_FINISH, "max_tokens", True, "length"),
        (translate.GEMINI_FINISH, "STOP", False, "stop"),
        (translate.GEMINI_FINISH, "STOP", True, "tool_calls"),
        (translate.GEMINI_FINISH, "MAX_TOKENS", False, "length"),
        (translate.GEMINI_FINISH, "SAFETY", False, "content_filter"),
        (translate.GEMINI_FINISH, "RECITATION", False, "content_filter"),
        (translate.GEMINI_FINISH, "SOMETHING_NEW", False, "stop"),
        (translate.OLLAMA_FINISH, "stop", False, "stop"),
        (translate.OLLAMA_FINISH, "stop", True, "tool_calls"),
        (translate.OLLAMA_FINISH, "length", False, "length"),
        (translate.OLLAMA_FINISH, None, False, "stop"),
    ],
)
def test_finish_reason_table(
    table: dict[str, str], reason: str | None, has_tools: bool, expected: str
) -> None:
    assert translate.finish_reason(table, reason, has_tools) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("auto", None)),
        ("auto", ("auto", None)),
        ("none", ("none", None)),
        ("required", ("required", None)),
        ({"type": "function", "function": {"name": "f"}}, ("function", "f")),
    ],
)
def test_tool_choice(value: Any, expected: tuple[str, str | None]) -> None:
    assert translate.tool_choice(value) == expected


def test_tool_choice_rejects_unknown() -> None:
    with pytest.raises(ProviderError) as info:
        translate.tool_choice("sometimes")
    assert info.value.status == 400


def test_stop_and_arguments() -> None:
    assert translate.normalize_stop(None) == []
    assert translate.normalize_stop("x") == ["x"]
    assert translate.normalize_stop(["a", "b"]) == ["a", "b"]
    assert translate.parse_arguments('{"a": 1}') == {"a": 1}
    assert translate.parse_arguments("") == {}
    assert json.loads(translate.dump_arguments({"city": "Zürich"})) == {"city": "Zürich"}
    with pytest.raises(ProviderError):
        translate.parse_arguments("[1, 2]")
    with pytest.raises(ProviderError):
        translate.parse_arguments("{not json")


def test_non_function_tools_are_rejected() -> None:
    with pytest.raises(ProviderError):
        translate.functions([{"type": "code_interpreter"}])


SSE_STREAM = (
    "event: message_start\r\n"
    'data: {"a": "héllo ✓"}\r\n'
    "\r\n"
    ": a comment\n"
    "event: ping\n"
    "data: {}\n"
    "\n"
    "data: line one\r"
    "data: line two\r"
    "\r"
    "event: empty\n\n"
    "data: tail"
).encode()
EXPECTED = [
    ("message_start", '{"a": "héllo ✓"}'),
    ("ping", "{}"),
    ("message", "line one\nline two"),
]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
def test_sse_parser_any_split(size: int) -> None:
    parser = vendor_http.SSEParser()
    events = []
    for i in range(0, len(SSE_STREAM), size):
        events += parser.feed(SSE_STREAM[i : i + size])
    # the unterminated "data: tail" is not an event (WHATWG: dispatch needs a blank line)
    assert [(e.event, e.data) for e in events] == EXPECTED


def test_sse_parser_every_two_way_split() -> None:
    for cut in range(len(SSE_STREAM)):
        parser = vendor_http.SSEParser()
        events = parser.feed(SSE_STREAM[:cut]) + parser.feed(SSE_STREAM[cut:])
        assert [(e.event, e.data) for e in events] == EXPECTED, cut


def _response(chunks: list[bytes]) -> httpx.Response:
    class Stream(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for c in chunks:
                yield c

    return httpx.Response(200, stream=Stream())


@pytest.mark.parametrize("size", [1, 3, 7])
async def test_ndjson_any_split(size: int) -> None:
    payload = '{"a": "Zürich"}\n\n{"b": 2}\r\n{"c": 3}'.encode()
    chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
    out = [x async for x in vendor_http.iter_ndjson("p", _response(chunks))]
    assert out == [{"a": "Zürich"}, {"b": 2}, {"c": 3}]


async def test_ndjson_truncated_last_line_is_a_broken_stream() -> None:
    with pytest.raises(ProviderError) as info:
        _ = [x async for x in vendor_http.iter_ndjson("p", _response([b'{"a": 1}\n{"b": ']))]
    assert info.value.code == "upstream_stream_broken"


async def test_ndjson_bad_line_is_malformed() -> None:
    with pytest.raises(ProviderError) as info:
        _ = [x async for x in vendor_http.iter_ndjson("p", _response([b"nope\n", b'{"a": 1}\n']))]
    assert info.value.code == "upstream_bad_response"


def test_retry_after_forms() -> None:
    assert vendor_http.parse_retry_after(httpx.Headers({"retry-after": "12"})) == 12.0
    assert vendor_http.parse_retry_after(httpx.Headers({"retry-after-ms": "1500"})) == 1.5
    assert vendor_http.parse_retry_after(httpx.Headers({})) is None
    assert vendor_http.parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    delay = vendor_http.parse_retry_after(httpx.Headers({"retry-after": later}))
    assert delay is not None and 0 < delay <= 60


@pytest.mark.parametrize(
    ("status", "out_status", "retryable", "code"),
    [
        (400, 400, False, "upstream_bad_request"),
        (401, 502, False, "upstream_auth_failed"),
        (403, 502, False, "upstream_auth_failed"),
        (404, 404, False, "upstream_not_found"),
        (408, 502, True, "upstream_unavailable"),
        (409, 502, True, "upstream_unavailable"),
        (429, 429, True, "upstream_rate_limited"),
        (500, 502, True, "upstream_unavailable"),
        (503, 502, True, "upstream_unavailable"),
        (529, 503, True, "upstream_overloaded"),
    ],
)
def test_status_classification(status: int, out_status: int, retryable: bool, code: str) -> None:
    err = vendor_http.error_for_status("p", status, "m", retry_after=1.0)
    assert (err.status, err.retryable, err.code, err.provider) == (
        out_status,
        retryable,
        code,
        "p",
    )


def test_transport_errors() -> None:
    req = httpx.Request("GET", "http://x")
    timeout = vendor_http.transport_error("p", httpx.ReadTimeout("slow", request=req))
    assert (timeout.status, timeout.retryable, timeout.code) == (504, True, "upstream_timeout")
    refused = vendor_http.transport_error("p", httpx.ConnectError("refused", request=req))
    assert (refused.status, refused.retryable) == (502, True)


def test_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_VENDOR_KEY", "secret")
    assert vendor_http.api_key({"api_key_env": "MY_VENDOR_KEY"}) == "secret"
    assert vendor_http.api_key({"api_key": "direct", "api_key_env": "MY_VENDOR_KEY"}) == "direct"
    assert vendor_http.api_key({}) is None


async def opened(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async def source() -> AsyncIterator[dict[str, Any]]:
        for chunk in chunks:
            yield chunk

    return [c async for c in translate.role_with_first_content(source())]


def deltas(chunks: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any], str | None]]:
    return [
        (c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"])
        if c["choices"]
        else (-1, c["usage"], None)
        for c in chunks
    ]


async def test_a_tool_call_carries_the_role_with_content_null() -> None:
    m = translate.ChunkMaker("chatcmpl-1", "m")
    out = await opened(
        [
            m.role(),
            m.tool_start(0, "call_1", "get_weather"),
            m.tool_arguments(0, '{"city": "Paris"}'),
            m.finish("tool_calls"),
            m.usage(translate.usage(3, 4)),
        ]
    )
    start = {"index": 0, "id": "call_1", "type": "function"}
    assert deltas(out) == [
        (
            0,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{**start, "function": {"name": "get_weather", "arguments": ""}}],
            },
            None,
        ),
        (0, {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]}, None),
        (0, {}, "tool_calls"),
        (-1, {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, None),
    ]
    assert all(c["id"] == "chatcmpl-1" and c["object"] == "chat.completion.chunk" for c in out)


async def test_text_and_empty_answers_keep_the_role_chunk_per_choice() -> None:
    m = translate.ChunkMaker("chatcmpl-1", "m")
    role = {"role": "assistant", "content": ""}
    out = await opened(
        [
            m.role(0),
            m.role(1),
            m.role(2),
            m.tool_start(0, "call_1", "f", "{}", index=1),
            m.text("Hi", 0),
            m.text(" there", 0),
            m.finish("stop", 2),  # choice 2 answered nothing
            m.finish("stop", 0),
            m.finish("tool_calls", 1),
            m.usage(translate.usage(1, 2)),
        ]
    )
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }
    assert deltas(out) == [
        (1, {"role": "assistant", "content": None, "tool_calls": [call]}, None),
        (0, role, None),
        (0, {"content": "Hi"}, None),
        (0, {"content": " there"}, None),
        (2, role, None),
        (2, {}, "stop"),
        (0, {}, "stop"),
        (1, {}, "tool_calls"),
        (-1, {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, None),
    ]


async def test_a_dropped_stream_closes_its_source_at_once() -> None:
    closed: list[bool] = []

    async def source() -> AsyncIterator[dict[str, Any]]:
        m = translate.ChunkMaker("chatcmpl-1", "m")
        try:
            yield m.role()
            yield m.text("a")
            yield m.text("b")
        finally:
            closed.append(True)

    stream = translate.role_with_first_content(source())
    assert "role" in (await anext(stream))["choices"][0]["delta"]
    await stream.aclose()  # type: ignore[attr-defined]
    assert closed == [True]
