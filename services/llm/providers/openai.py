"""OpenAI Chat Completions adapter, for OpenAI itself and any OpenAI-compatible server
(vLLM, LM Studio, llama.cpp server, Ollama's ``/v1``, ...).

Config: ``base_url`` (default https://api.openai.com/v1), ``api_key`` / ``api_key_env``
(default OPENAI_API_KEY; no key is fine for local servers), ``organization``, ``project``,
``timeout`` / ``connect_timeout`` (seconds), ``headers`` (extra headers), ``defaults``
(request params applied under the caller's), ``models`` (static model list instead of
``GET /models``), ``stream_usage`` (default true: ask for the final usage chunk with
``stream_options.include_usage``; set false for servers that reject ``stream_options``),
``max_connections``, ``http_pool`` (``aiohttp``, the only one left), ``transport`` (tests).

The OpenAI body is passed through unchanged (tools, tool_choice, response_format, stop,
seed, logprobs, ...): the wire format already is aistack's internal format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from services.llm.providers import _http as vendor_http
from services.llm.providers import _translate as translate
from services.llm.providers.base import (
    ChatRequest,
    EmbeddingRequest,
    ModelInfo,
    Provider,
    ProviderError,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}


def error_message(body: bytes) -> str | None:
    """The message of an OpenAI error body, and of the variants compatible servers send."""
    data = orjson.loads(body)
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        parts = [str(error.get("message") or "")]
        kind = error.get("code") or error.get("type")
        if kind:
            parts.insert(0, f"{kind}:")
        return " ".join(p for p in parts if p)
    if isinstance(error, str):
        return error
    # vLLM: {"object": "error", "message": ...}; FastAPI-style servers: {"detail": ...}
    for key in ("message", "detail"):
        if data.get(key):
            return str(data[key])
    return None


def _estimate_tokens(text: str) -> int:
    # Only used when an upstream ignores include_usage: roughly 4 characters per token.
    return (len(text) + 3) // 4 if text else 0


class OpenAIProvider(Provider):
    kind = "openai"
    default_base_url = DEFAULT_BASE_URL
    default_key_env = DEFAULT_KEY_ENV
    owned_by = "openai"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        self.client = vendor_http.make_client(
            config, default_base_url=self._base_url(), headers=self._headers()
        )
        self.stream_usage = bool(config.get("stream_usage", True))
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self._timeout = self.client.timeout.as_dict()

    # -- hooks the Azure adapter overrides ------------------------------------------------

    def _base_url(self) -> str:
        return str(self.config.get("base_url") or self.default_base_url)

    def _headers(self) -> dict[str, str]:
        headers = dict(JSON_HEADERS)
        key = vendor_http.api_key({"api_key_env": self.default_key_env, **self.config})
        if key:
            headers["authorization"] = f"Bearer {key}"
        if self.config.get("organization"):
            headers["openai-organization"] = str(self.config["organization"])
        if self.config.get("project"):
            headers["openai-project"] = str(self.config["project"])
        return headers

    def _url(self, operation: str, model: str | None) -> str:
        """Path of ``chat/completions`` / ``embeddings`` / ``models`` relative to base_url."""
        return f"/{operation}"

    def _params(self) -> dict[str, str]:
        return {}

    # -- requests -------------------------------------------------------------------------

    def _post(self, operation: str, model: str, body: dict[str, Any]) -> httpx.Request:
        # the absolute URL is built once per (operation, model): merging and parsing it was a
        # visible share of every call
        url = self._urls.get((operation, model))
        if url is None:
            url = self.client.build_request(
                "POST", self._url(operation, model), params=self._params() or None
            ).url
            if len(self._urls) < 1024:
                self._urls[(operation, model)] = url
        # what build_request would add besides: cookies (none) and a second URL merge
        return self.client.post_request(url, orjson.dumps(body), {"timeout": self._timeout})

    def _chat_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body = translate.merged_params(self.config, request.params)
        body.pop("stream", None)
        body["model"] = request.model
        body["messages"] = request.messages
        if stream:
            body["stream"] = True
            if self.stream_usage:
                options = dict(body.get("stream_options") or {})
                options["include_usage"] = True
                body["stream_options"] = options
        else:
            body.pop("stream_options", None)
        return body

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        body = self._chat_body(request, stream=False)
        data = await vendor_http.send_json(
            self.client,
            self.name,
            self._post("chat/completions", request.model, body),
            error_message,
        )
        self._raise_embedded_error(data)
        choices = data.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise vendor_http.malformed(self.name, "chat completion without a choices list")
        if not isinstance(data.get("usage"), dict):
            data["usage"] = translate.usage(0, 0)
        return data

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        body = self._chat_body(request, stream=True)
        response = await vendor_http.send(
            self.client,
            self.name,
            self._post("chat/completions", request.model, body),
            error_message,
        )
        try:
            async for chunk in self._chunks(response, request):
                yield chunk
        finally:
            await response.aclose()

    async def _chunks(
        self, response: httpx.Response, request: ChatRequest
    ) -> AsyncIterator[dict[str, Any]]:
        last: dict[str, Any] | None = None
        usage_seen = False
        text_chars = 0
        events = vendor_http.iter_sse(self.name, response)
        async for event in events:
            data = event.data
            if data == "[DONE]":
                if not usage_seen:
                    yield self._estimated_usage(last, request, text_chars)
                await vendor_http.drain(events)
                return
            if event.event == "error":
                raise self._stream_error(data)
            chunk = vendor_http.loads_object(self.name, data)
            self._raise_embedded_error(chunk)
            choices = chunk.get("choices")
            if not isinstance(choices, list):
                raise vendor_http.malformed(self.name, "stream chunk without a choices list")
            for choice in choices:
                if not isinstance(choice, dict):
                    raise vendor_http.malformed(self.name, "stream choice is not an object")
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    text_chars += len(content)
            if isinstance(chunk.get("usage"), dict):
                # vLLM's continuous usage stats put usage on every chunk; the last one wins
                usage_seen = True
            last = chunk
            yield chunk
        raise vendor_http.broken_stream(self.name, "no [DONE] event")

    def _estimated_usage(
        self, last: dict[str, Any] | None, request: ChatRequest, text_chars: int
    ) -> dict[str, Any]:
        maker = translate.ChunkMaker(
            str((last or {}).get("id") or translate.new_id("chatcmpl-")),
            str((last or {}).get("model") or request.model),
        )
        prompt = sum(
            _estimate_tokens(translate.text_of(m.get("content"))) for m in request.messages
        )
        completion = (text_chars + 3) // 4
        chunk = maker.usage(translate.usage(prompt, completion))
        # a marker so usage accounting can tell a guess from the upstream's count
        chunk["usage"]["estimated"] = True
        return chunk

    def _stream_error(self, data: str) -> ProviderError:
        try:
            message = error_message(data.encode()) or data
        except ValueError:
            message = data
        return vendor_http.error_for_status(self.name, 500, message[:500])

    def _raise_embedded_error(self, data: dict[str, Any]) -> None:
        """OpenAI-compatible servers report some failures as a 200 body/chunk with ``error``."""
        error = data.get("error")
        if error is None:
            if data.get("object") != "error":  # older vLLM: the error is the object itself
                return
            error = data
        message = error_message(orjson.dumps(data)) or "unknown error"
        status = 500
        if isinstance(error, dict):
            code = error.get("code")
            if isinstance(code, int) and 400 <= code < 600:
                status = code
        raise vendor_http.error_for_status(self.name, status, message[:500])

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            **dict(self.config.get("embedding_defaults") or {}),
            **request.params,
            "model": request.model,
            "input": list(request.input),
        }
        data = await vendor_http.send_json(
            self.client, self.name, self._post("embeddings", request.model, body), error_message
        )
        self._raise_embedded_error(data)
        if not isinstance(data.get("data"), list):
            raise vendor_http.malformed(self.name, "embeddings response without a data list")
        if not isinstance(data.get("usage"), dict):
            data["usage"] = {"prompt_tokens": 0, "total_tokens": 0}
        return data

    async def list_models(self) -> list[ModelInfo]:
        static = self._static_models()
        if static is not None:
            return static
        request = self.client.build_request(
            "GET", self._url("models", None), params=self._params() or None
        )
        data = await vendor_http.send_json(self.client, self.name, request, error_message)
        try:
            return [
                ModelInfo(id=str(m["id"]), owned_by=str(m.get("owned_by") or self.owned_by))
                for m in data["data"]
            ]
        except (KeyError, TypeError) as exc:
            raise vendor_http.malformed(
                self.name, f"unexpected model list shape: {exc!r}"
            ) from None

    def _static_models(self) -> list[ModelInfo] | None:
        models = self.config.get("models")
        if models is None:
            return None
        out = []
        for m in models:
            if isinstance(m, dict):
                out.append(
                    ModelInfo(
                        id=str(m["id"]),
                        owned_by=str(m.get("owned_by") or self.owned_by),
                        context_window=m.get("context_window"),
                    )
                )
            else:
                out.append(ModelInfo(id=str(m), owned_by=self.owned_by))
        return out

    async def aclose(self) -> None:
        await self.client.aclose()
