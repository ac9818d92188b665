"""Anthropic Messages API adapter (``POST /v1/messages``).

Config: ``base_url`` (default https://api.anthropic.com), ``api_key`` / ``api_key_env``
(default ANTHROPIC_API_KEY), ``timeout``, ``default_max_tokens`` (Anthropic requires
``max_tokens``), ``anthropic_version``, ``defaults`` (request params), ``models`` (static
list instead of asking ``GET /v1/models``), ``transport`` (tests).

JSON mode has no native switch in the Messages API: it is emulated with a system
instruction (and the JSON Schema when one is given), so the output is not guaranteed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from services.llm.providers import _http as vendor_http
from services.llm.providers import _translate as translate
from services.llm.providers.base import ChatRequest, ModelInfo, Provider, ProviderError

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096


def _error_message(body: bytes) -> str | None:
    data = json.loads(body)
    error = data.get("error") or {}
    return f"{error.get('type', 'error')}: {error.get('message', '')}"


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in translate.content_parts(content):
        kind = part.get("type")
        if kind in ("text", "input_text"):
            if part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
        elif kind == "image_url":
            url = translate.image_url(part)
            data = translate.parse_data_url(url)
            if data:
                source = {"type": "base64", "media_type": data[0], "data": data[1]}
            else:
                source = {"type": "url", "url": url}
            blocks.append({"type": "image", "source": source})
        else:
            raise translate.invalid(f"unsupported content part for anthropic: {kind}")
    return blocks


def translate_messages(
    messages: list[dict[str, Any]],
) -> tuple[list[str], list[dict[str, Any]]]:
    """OpenAI messages → (system texts, Anthropic messages with merged same-role turns)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = translate.text_of(message.get("content"))
            if text:
                system.append(text)
        elif role == "user":
            add("user", _content_blocks(message.get("content")))
        elif role == "assistant":
            blocks = _content_blocks(message.get("content"))
            for call in message.get("tool_calls") or []:
                fn = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id") or translate.tool_call_id(),
                        "name": fn.get("name", ""),
                        "input": translate.parse_arguments(fn.get("arguments")),
                    }
                )
            add("assistant", blocks)
        elif role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": translate.text_of(message.get("content")),
            }
            add("user", [result])
        else:
            raise translate.invalid(f"unsupported message role: {role}")
    return system, out


def build_body(request: ChatRequest, config: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The Anthropic ``/v1/messages`` body for an OpenAI-format request."""
    params = translate.merged_params(config, request.params)
    if int(params.get("n") or 1) != 1:
        raise translate.invalid("anthropic returns one choice per request (n must be 1)")
    system, messages = translate_messages(request.messages)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": translate.max_tokens(params)
        or int(config.get("default_max_tokens", DEFAULT_MAX_TOKENS)),
    }
    json_mode = translate.json_mode(params)
    if json_mode:
        system.append(translate.json_instruction(json_mode))
    if system:
        body["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p", "top_k"):
        if params.get(key) is not None:
            body[key] = params[key]
    stop = translate.normalize_stop(params.get("stop"))
    if stop:
        body["stop_sequences"] = stop
    if params.get("user"):
        body["metadata"] = {"user_id": str(params["user"])}
    mode, name = translate.tool_choice(params.get("tool_choice"))
    tools = translate.functions(params.get("tools"))
    if tools:
        # with "none" the tools are still sent: a history holding tool_use or tool_result
        # blocks is refused (400) by a request that defines no tools
        body["tools"] = [
            {"name": f["name"], "description": f["description"], "input_schema": f["parameters"]}
            for f in tools
        ]
        kinds = {"auto": "auto", "required": "any", "none": "none"}
        choice: dict[str, Any] = {"type": kinds.get(mode, "tool")}
        if mode == "function":
            choice["name"] = name
        if params.get("parallel_tool_calls") is False and mode != "none":
            choice["disable_parallel_tool_use"] = True
        body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


class AnthropicProvider(Provider):
    kind = "anthropic"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        headers = {
            "anthropic-version": str(config.get("anthropic_version", API_VERSION)),
            "content-type": "application/json",
        }
        key = vendor_http.api_key({"api_key_env": "ANTHROPIC_API_KEY", **config})
        if key:
            headers["x-api-key"] = key
        self.client = vendor_http.make_client(
            config, default_base_url=DEFAULT_BASE_URL, headers=headers
        )

    def _request(self, body: dict[str, Any]) -> httpx.Request:
        return self.client.build_request("POST", "/v1/messages", json=body)

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        body = build_body(request, self.config, stream=False)
        data = await vendor_http.send_json(
            self.client, self.name, self._request(body), _error_message
        )
        if data.get("type") == "error":
            raise self._event_error(data)
        try:
            return self._completion(data, request.model)
        except (KeyError, TypeError, AttributeError) as exc:
            raise vendor_http.malformed(self.name, f"unexpected message shape: {exc!r}") from None

    def _completion(self, data: dict[str, Any], model: str) -> dict[str, Any]:
        text: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in data["content"]:
            if block["type"] == "text":
                text.append(block["text"])
            elif block["type"] == "tool_use":
                calls.append(translate.tool_call(block["id"], block["name"], block.get("input")))
        finish = translate.finish_reason(
            translate.ANTHROPIC_FINISH, data.get("stop_reason"), bool(calls)
        )
        u = data.get("usage") or {}
        return translate.completion(
            id=str(data.get("id") or translate.new_id("chatcmpl-")),
            model=str(data.get("model") or model),
            choices=[translate.choice(0, "".join(text), calls, finish)],
            usage=translate.usage(_input_tokens(u), u.get("output_tokens")),
        )

    def _event_error(self, data: dict[str, Any]) -> ProviderError:
        error = data.get("error") or {}
        kind = str(error.get("type", "error"))
        message = f"{kind}: {error.get('message', '')}"
        status = {
            "overloaded_error": 529,
            "rate_limit_error": 429,
            "api_error": 500,
            "authentication_error": 401,
            "permission_error": 403,
            "not_found_error": 404,
            "request_too_large": 413,
            "timeout_error": 504,
        }.get(kind, 400 if kind == "invalid_request_error" else 500)
        return vendor_http.error_for_status(self.name, status, message)

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        body = build_body(request, self.config, stream=True)
        response = await vendor_http.send(
            self.client, self.name, self._request(body), _error_message
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
        tool_index: dict[int, int] = {}  # anthropic content block index → OpenAI tool index
        no_arguments: set[int] = set()  # tool blocks that have streamed no input JSON yet
        prompt_tokens = completion_tokens = 0
        stop_reason: str | None = None
        started = False
        events = vendor_http.iter_sse(self.name, response)
        async for event in events:
            data = vendor_http.loads_object(self.name, event.data)
            kind = data.get("type", event.event)
            try:
                if kind == "message_start":
                    message = data["message"]
                    maker.id = str(message.get("id") or maker.id)
                    maker.model = str(message.get("model") or model)
                    u = message.get("usage") or {}
                    prompt_tokens = _input_tokens(u)
                    completion_tokens = int(u.get("output_tokens") or 0)
                    started = True
                    yield maker.role()
                elif not started and kind not in ("error", "ping"):
                    raise vendor_http.malformed(self.name, f"{kind} before message_start")
                elif kind == "content_block_start":
                    block = data["content_block"]
                    if block["type"] == "tool_use":
                        tool_index[data["index"]] = len(tool_index)
                        no_arguments.add(data["index"])
                        yield maker.tool_start(
                            tool_index[data["index"]], block["id"], block["name"]
                        )
                    elif block["type"] == "text" and block.get("text"):
                        yield maker.text(block["text"])
                elif kind == "content_block_delta":
                    delta = data["delta"]
                    if delta["type"] == "text_delta":
                        yield maker.text(delta["text"])
                    elif (
                        delta["type"] == "input_json_delta"
                        and delta["partial_json"]
                        # server tool blocks (web search, ...) also stream input JSON
                        and data["index"] in tool_index
                    ):
                        no_arguments.discard(data["index"])
                        yield maker.tool_arguments(tool_index[data["index"]], delta["partial_json"])
                elif kind == "content_block_stop":
                    if data["index"] in no_arguments:
                        # a call without arguments streams only an empty partial_json; OpenAI
                        # clients json.loads the arguments, so they must be an object
                        no_arguments.discard(data["index"])
                        yield maker.tool_arguments(tool_index[data["index"]], "{}")
                elif kind == "message_delta":
                    stop_reason = data.get("delta", {}).get("stop_reason") or stop_reason
                    u = data.get("usage") or {}
                    if u.get("output_tokens") is not None:
                        completion_tokens = int(u["output_tokens"])
                    if u.get("input_tokens") is not None:
                        # cumulative; may omit the cache counts message_start had
                        prompt_tokens = max(prompt_tokens, _input_tokens(u))
                elif kind == "message_stop":
                    finish = translate.finish_reason(
                        translate.ANTHROPIC_FINISH, stop_reason, bool(tool_index)
                    )
                    yield maker.finish(finish)
                    yield maker.usage(translate.usage(prompt_tokens, completion_tokens))
                    await vendor_http.drain(events)
                    return
                elif kind == "error":
                    raise self._event_error(data)
                # ping and future event types carry nothing for OpenAI
            except (KeyError, TypeError, AttributeError) as exc:
                raise vendor_http.malformed(
                    self.name, f"unexpected {kind} event: {exc!r}"
                ) from None
        raise vendor_http.broken_stream(self.name, "no message_stop event")

    async def list_models(self) -> list[ModelInfo]:
        """Static ``models`` from config, else the paginated ``GET /v1/models``."""
        if self.config.get("models"):
            return [ModelInfo(id=str(m), owned_by="anthropic") for m in self.config["models"]]
        models: list[ModelInfo] = []
        params: dict[str, str] = {"limit": "1000"}
        while True:
            request = self.client.build_request("GET", "/v1/models", params=params)
            data = await vendor_http.send_json(self.client, self.name, request, _error_message)
            for m in data.get("data") or []:
                window = m.get("max_input_tokens")
                models.append(
                    ModelInfo(id=str(m["id"]), owned_by="anthropic", context_window=window)
                )
            if not data.get("has_more") or not data.get("last_id"):
                return models
            params = {"limit": "1000", "after_id": str(data["last_id"])}

    async def aclose(self) -> None:
        await self.client.aclose()


def _input_tokens(u: dict[str, Any]) -> int:
    # cached prompt tokens are still prompt tokens for billing and context accounting
    return sum(
        int(u.get(k) or 0)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
