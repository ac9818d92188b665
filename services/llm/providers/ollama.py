"""Ollama native API adapter (``/api/chat`` NDJSON stream, ``/api/embed``, ``/api/tags``).

Config: ``base_url`` (default http://127.0.0.1:11434), optional ``api_key`` /
``api_key_env`` (sent as a bearer token, for Ollama behind a proxy), ``timeout``,
``keep_alive``, ``defaults``, ``transport`` (tests).

Ollama has no ``tool_choice``: ``none`` omits the tools, a named function sends only that
tool, ``required`` cannot be enforced and behaves like ``auto``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from services.llm.providers import _http as vendor_http
from services.llm.providers import _translate as translate
from services.llm.providers.base import ChatRequest, EmbeddingRequest, ModelInfo, Provider

DEFAULT_BASE_URL = "http://127.0.0.1:11434"


def _error_message(body: bytes) -> str | None:
    return str(json.loads(body)["error"])


def translate_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages → Ollama messages (images as bare base64, arguments as objects)."""
    names = translate.tool_names_by_id(messages)
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise translate.invalid(f"unsupported message role: {role}")
        item: dict[str, Any] = {"role": role, "content": translate.text_of(message.get("content"))}
        images = []
        for part in translate.content_parts(message.get("content")):
            if part.get("type") == "image_url":
                data = translate.parse_data_url(translate.image_url(part))
                if data is None:
                    raise translate.invalid("ollama accepts images only as base64 data URLs")
                images.append(data[1])
        if images:
            item["images"] = images
        if role == "assistant" and message.get("tool_calls"):
            item["tool_calls"] = [
                {
                    "function": {
                        "name": (call.get("function") or {}).get("name", ""),
                        "arguments": translate.parse_arguments(
                            (call.get("function") or {}).get("arguments")
                        ),
                    }
                }
                for call in message["tool_calls"]
            ]
        if role == "tool":
            name = names.get(str(message.get("tool_call_id", ""))) or message.get("name")
            if name:
                item["tool_name"] = name
        out.append(item)
    return out


def build_body(request: ChatRequest, config: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The Ollama ``/api/chat`` body for an OpenAI-format request."""
    params = translate.merged_params(config, request.params)
    if int(params.get("n") or 1) != 1:
        raise translate.invalid("ollama returns one choice per request (n must be 1)")
    body: dict[str, Any] = {
        "model": request.model,
        "messages": translate_messages(request.messages),
        "stream": stream,
    }
    options: dict[str, Any] = {}
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("seed", "seed"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
    ):
        if params.get(src) is not None:
            options[dst] = params[src]
    limit = translate.max_tokens(params)
    if limit:
        options["num_predict"] = limit
    stop = translate.normalize_stop(params.get("stop"))
    if stop:
        options["stop"] = stop
    if options:
        body["options"] = options
    json_mode = translate.json_mode(params)
    if json_mode:
        body["format"] = json_mode[1] if json_mode[1] is not None else "json"
    mode, name = translate.tool_choice(params.get("tool_choice"))
    tools = translate.functions(params.get("tools"))
    if mode == "function":
        tools = [f for f in tools if f["name"] == name]
    if tools and mode != "none":
        body["tools"] = [{"type": "function", "function": f} for f in tools]
    if config.get("keep_alive") is not None:
        body["keep_alive"] = config["keep_alive"]
    return body


def _tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        translate.tool_call(
            call.get("id") or translate.tool_call_id(),
            call["function"]["name"],
            call["function"].get("arguments"),
        )
        for call in message.get("tool_calls") or []
    ]


class OllamaProvider(Provider):
    kind = "ollama"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        headers = {"content-type": "application/json"}
        key = vendor_http.api_key(config)
        if key:
            headers["authorization"] = f"Bearer {key}"
        self.client = vendor_http.make_client(
            config, default_base_url=DEFAULT_BASE_URL, headers=headers
        )

    def _request(self, method: str, url: str, **kw: Any) -> httpx.Request:
        return self.client.build_request(method, url, **kw)

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        body = build_body(request, self.config, stream=False)
        data = await vendor_http.send_json(
            self.client, self.name, self._request("POST", "/api/chat", json=body), _error_message
        )
        if "error" in data:
            raise vendor_http.error_for_status(self.name, 500, str(data["error"]))
        try:
            message = data["message"]
            calls = _tool_calls(message)
            finish = translate.finish_reason(
                translate.OLLAMA_FINISH, data.get("done_reason"), bool(calls)
            )
            return translate.completion(
                id=translate.new_id("chatcmpl-"),
                model=str(data.get("model") or request.model),
                choices=[translate.choice(0, message.get("content") or "", calls, finish)],
                usage=translate.usage(data.get("prompt_eval_count"), data.get("eval_count")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise vendor_http.malformed(self.name, f"unexpected response shape: {exc!r}") from None

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        body = build_body(request, self.config, stream=True)
        response = await vendor_http.send(
            self.client, self.name, self._request("POST", "/api/chat", json=body), _error_message
        )
        try:
            async for chunk in translate.role_with_first_content(
                self._chunks(response, request.model)
            ):
                yield chunk
        finally:
            await response.aclose()

    async def _chunks(self, response: httpx.Response, model: str) -> AsyncIterator[dict[str, Any]]:
        maker = translate.ChunkMaker(translate.new_id("chatcmpl-"), model)
        tools = 0
        started = False
        lines = vendor_http.iter_ndjson(self.name, response)
        async for data in lines:
            if "error" in data:
                # an error after the 200 header arrives as a last {"error": ...} line
                raise vendor_http.error_for_status(self.name, 500, str(data["error"]))
            try:
                if not started:
                    started = True
                    maker.model = str(data.get("model") or model)
                    yield maker.role()
                message = data.get("message") or {}
                if message.get("content"):
                    yield maker.text(message["content"])
                for call in _tool_calls(message):
                    yield maker.tool_start(
                        tools, call["id"], call["function"]["name"], call["function"]["arguments"]
                    )
                    tools += 1
                if data.get("done"):
                    finish = translate.finish_reason(
                        translate.OLLAMA_FINISH, data.get("done_reason"), bool(tools)
                    )
                    yield maker.finish(finish)
                    tokens = translate.usage(data.get("prompt_eval_count"), data.get("eval_count"))
                    yield maker.usage(tokens)
                    await vendor_http.drain(lines)
                    return
            except (KeyError, TypeError, AttributeError) as exc:
                raise vendor_http.malformed(self.name, f"unexpected chunk shape: {exc!r}") from None
        raise vendor_http.broken_stream(self.name, "no done line")

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "input": list(request.input)}
        if request.params.get("dimensions"):
            body["dimensions"] = int(request.params["dimensions"])
        data = await vendor_http.send_json(
            self.client, self.name, self._request("POST", "/api/embed", json=body), _error_message
        )
        try:
            vectors = list(data["embeddings"])
        except (KeyError, TypeError) as exc:
            raise vendor_http.malformed(
                self.name, f"unexpected embeddings shape: {exc!r}"
            ) from None
        tokens = int(data.get("prompt_eval_count") or 0)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ],
            "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def list_models(self) -> list[ModelInfo]:
        data = await vendor_http.send_json(
            self.client, self.name, self._request("GET", "/api/tags"), _error_message
        )
        return [
            ModelInfo(id=str(m.get("model") or m["name"]), owned_by="ollama")
            for m in data.get("models") or []
        ]

    async def aclose(self) -> None:
        await self.client.aclose()
