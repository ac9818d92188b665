"""Requests popular OpenAI-compatible clients send, byte for byte as captured from them
(LangChain, LlamaIndex, instructor, LiteLLM, the Vercel AI SDK), replayed with httpx or the
official SDK: the clients themselves are not dependencies."""

from __future__ import annotations

import openai
import pytest

from libs.testing import auth_headers
from tests.support.stacks.llm import Env


async def test_langchain_embeddings_send_token_ids(env: Env) -> None:
    # langchain_openai.OpenAIEmbeddings (check_embedding_ctx_length=True, its default) splits
    # its texts with tiktoken (cl100k_base for a model name tiktoken does not know) and sends
    # the token ids: embed_documents(["hello world", "Grüße 😀"]) is exactly this body
    body = {
        "input": [[15339, 1917], [6600, 2448, 24352, 91416]],
        "model": "embed",
        "encoding_format": "base64",
    }
    resp = await env.http.post("/v1/embeddings", json=body, headers=auth_headers(env.principal))
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert all(isinstance(d["embedding"], str) for d in data)  # base64, as asked
    # the provider was given the texts those ids stand for
    assert env.primary.behavior.last["json"]["input"] == ["hello world", "Grüße 😀"]


async def test_token_id_input_forms_and_bad_ids(env: Env) -> None:
    # one list of ids is one input (the SDK's `input: Iterable[int]`)
    resp = await env.client.embeddings.create(model="embed", input=[15339, 1917])
    assert len(resp.data) == 1
    assert env.primary.behavior.last["json"]["input"] == ["hello world"]

    with pytest.raises(openai.BadRequestError) as exc:
        await env.client.embeddings.create(model="embed", input=[[15339], [10**7]])
    assert exc.value.code == "invalid_input"
    assert exc.value.param == "input.1"
    with pytest.raises(openai.BadRequestError) as exc:
        await env.client.embeddings.create(model="embed", input=[[15339], []])
    assert exc.value.code == "invalid_input"
    assert len(await env.usage_events()) == 1  # the refused calls cost nothing


async def test_malformed_json_names_no_param(env: Env) -> None:
    # OpenAI answers an unparsable body with param null; clients show `param` as the field
    # at fault (it was "0", the character offset pydantic reports)
    resp = await env.http.post(
        "/v1/chat/completions",
        content=b'{"model": ',
        headers={**auth_headers(env.principal), "content-type": "application/json"},
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "malformed_json",
        None,
        "invalid_request_error",
    )
