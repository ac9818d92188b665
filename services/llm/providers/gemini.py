"""Google Gemini API adapter (``generateContent`` / ``streamGenerateContent?alt=sse``).

Config: ``base_url`` (default https://generativelanguage.googleapis.com), ``api_key`` /
``api_key_env`` (default GEMINI_API_KEY), ``timeout``, ``defaults``, ``transport`` (tests).

Gemini function calls carry no ids, so ids are synthesized; tool results need the function
name, which is recovered from the earlier assistant tool call with the same id.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx

from services.llm.providers import _http as vendor_http
from services.llm.providers import _translate as translate
from services.llm.providers.base import (
    ChatRequest,
    EmbeddingRequest,
    ModelInfo,
    Provider,
    ProviderError,
)

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
EMBED_BATCH = 100  # the most requests batchEmbedContents takes in one call
EMBED_CONCURRENCY = 4  # batch calls of one embeddings request in flight at once


def _error_message(body: bytes) -> str | None:
    data = json.loads(body)
    if isinstance(data, list) and data:  # streaming endpoints may wrap the error in a list
        data = data[0]
    error = data.get("error") or {}
    return f"{error.get('status', 'ERROR')}: {error.get('message', '')}"


#: ``google.rpc.ErrorInfo`` reasons that blame aistack's credentials, whatever the status
#: (Google answers a wrong API key with 400 INVALID_ARGUMENT, not 401)
AUTH_REASONS = frozenset({"API_KEY_INVALID"})


def _error_reasons(body: bytes) -> set[str]:
    """The ``ErrorInfo.reason`` values of an error body."""
    try:
        data = json.loads(body)
        if isinstance(data, list):
            data = data[0]
        details = data["error"].get("details") or []
        return {str(d["reason"]) for d in details if isinstance(d, dict) and d.get("reason")}
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return set()


def _retry_delay(body: bytes) -> float | None:
    """``google.rpc.RetryInfo.retryDelay`` ("30s") from an error body, if any."""
    try:
        data = json.loads(body)
        if isinstance(data, list):
            data = data[0]
        for detail in data["error"].get("details") or []:
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and re.fullmatch(r"\d+(\.\d+)?s", delay):
                return float(delay[:-1])
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None
    return None


def _recording(reasons: set[str]) -> vendor_http.MessageExtractor:
    """The error message extractor, also collecting the body's ErrorInfo reasons."""

    def extract(body: bytes) -> str | None:
        reasons.update(_error_reasons(body))
        return _error_message(body)

    return extract


def _parts(content: Any) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in translate.content_parts(content):
        kind = part.get("type")
        if kind in ("text", "input_text"):
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            url = translate.image_url(part)
            data = translate.parse_data_url(url)
            if data:
                parts.append({"inlineData": {"mimeType": data[0], "data": data[1]}})
            else:
                parts.append({"fileData": {"fileUri": url}})
        else:
            raise translate.invalid(f"unsupported content part for gemini: {kind}")
    return parts


def _function_response(content: Any) -> dict[str, Any]:
    text = translate.text_of(content)
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    # functionResponse.response must be an object (a protobuf Struct)
    return value if isinstance(value, dict) else {"result": text}


def translate_messages(
    messages: list[dict[str, Any]],
) -> tuple[list[str], list[dict[str, Any]]]:
    """OpenAI messages → (system texts, Gemini ``contents`` with merged same-role turns)."""
    names = translate.tool_names_by_id(messages)
    system: list[str] = []
    contents: list[dict[str, Any]] = []

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = translate.text_of(message.get("content"))
            if text:
                system.append(text)
        elif role == "user":
            add("user", _parts(message.get("content")))
        elif role == "assistant":
            parts = _parts(message.get("content"))
            for call in message.get("tool_calls") or []:
                fn = call.get("function") or {}
                part: dict[str, Any] = {
                    "functionCall": {
                        "name": fn.get("name", ""),
                        "args": translate.parse_arguments(fn.get("arguments")),
                    }
                }
                signature = ((call.get("extra_content") or {}).get("google") or {}).get(
                    "thought_signature"
                )
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            add("model", parts)
        elif role == "tool":
            call_id = str(message.get("tool_call_id", ""))
            name = names.get(call_id) or message.get("name")
            if not name:
                raise translate.invalid(
                    f"tool message {call_id!r} answers no earlier assistant tool call"
                )
            response = _function_response(message.get("content"))
            add("user", [{"functionResponse": {"name": name, "response": response}}])
        else:
            raise translate.invalid(f"unsupported message role: {role}")
    return system, contents


def build_body(request: ChatRequest, config: dict[str, Any]) -> dict[str, Any]:
    """The Gemini ``generateContent`` body for an OpenAI-format request."""
    params = translate.merged_params(config, request.params)
    system, contents = translate_messages(request.messages)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    gen: dict[str, Any] = {}
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if params.get(src) is not None:
            gen[dst] = params[src]
    if params.get("n") and int(params["n"]) != 1:
        gen["candidateCount"] = int(params["n"])
    limit = translate.max_tokens(params)
    if limit:
        gen["maxOutputTokens"] = limit
    stop = translate.normalize_stop(params.get("stop"))
    if stop:
        gen["stopSequences"] = stop
    json_mode = translate.json_mode(params)
    if json_mode:
        gen["responseMimeType"] = "application/json"
        if json_mode[1] is not None:
            gen["responseJsonSchema"] = json_mode[1]
    if gen:
        body["generationConfig"] = gen
    tools = translate.functions(params.get("tools"))
    if tools:
        body["tools"] = [
            {
                "functionDeclarations": [
                    {
                        "name": f["name"],
                        "description": f["description"],
                        # JSON Schema as OpenAI clients write it (``parameters`` only
                        # accepts Gemini's OpenAPI subset)
                        "parametersJsonSchema": f["parameters"],
                    }
                    for f in tools
                ]
            }
        ]
        mode, name = translate.tool_choice(params.get("tool_choice"))
        config_: dict[str, Any] = {
            "mode": {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}[mode]
        }
        if name:
            config_["allowedFunctionNames"] = [name]
        body["toolConfig"] = {"functionCallingConfig": config_}
    return body


def _with_signature(call: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Carry Gemini's ``thoughtSignature`` where Google's own OpenAI-compatible endpoint puts
    it; thinking models reject a later turn whose function calls lost their signature."""
    if part.get("thoughtSignature"):
        call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return call


def _model_path(model: str) -> str:
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


def _usage(data: dict[str, Any]) -> dict[str, int]:
    meta = data.get("usageMetadata") or {}
    completion = int(meta.get("candidatesTokenCount") or 0) + int(
        meta.get("thoughtsTokenCount") or 0
    )
    return translate.usage(meta.get("promptTokenCount"), completion)


class GeminiProvider(Provider):
    kind = "gemini"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        headers = {"content-type": "application/json"}
        key = vendor_http.api_key({"api_key_env": "GEMINI_API_KEY", **config})
        if key:
            headers["x-goog-api-key"] = key
        self.client = vendor_http.make_client(
            config, default_base_url=DEFAULT_BASE_URL, headers=headers
        )

    async def _open(self, method: str, url: str, **kw: Any) -> httpx.Response:
        request = self.client.build_request(method, url, **kw)
        reasons: set[str] = set()
        try:
            return await vendor_http.send(
                self.client, self.name, request, _recording(reasons), _retry_delay
            )
        except ProviderError as exc:
            self._reclassify(exc, reasons)
            raise

    async def _json(self, method: str, url: str, **kw: Any) -> dict[str, Any]:
        request = self.client.build_request(method, url, **kw)
        reasons: set[str] = set()
        try:
            return await vendor_http.send_json(
                self.client, self.name, request, _recording(reasons), _retry_delay
            )
        except ProviderError as exc:
            self._reclassify(exc, reasons)
            raise

    @staticmethod
    def _reclassify(error: ProviderError, reasons: set[str]) -> None:
        """A rejected API key is an authentication failure whatever status carried it (Google
        answers a wrong key with 400): no retry, but the next target gets its chance."""
        if reasons & AUTH_REASONS:
            error.status, error.code, error.retryable = 502, "upstream_auth_failed", False
            error.retry_after = None

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        body = build_body(request, self.config)
        url = f"/v1beta/{_model_path(request.model)}:generateContent"
        data = await self._json("POST", url, json=body)
        try:
            return self._completion(data, request.model)
        except (KeyError, TypeError, AttributeError) as exc:
            raise vendor_http.malformed(self.name, f"unexpected response shape: {exc!r}") from None

    def _completion(self, data: dict[str, Any], model: str) -> dict[str, Any]:
        choices = []
        for position, candidate in enumerate(data.get("candidates") or []):
            text: list[str] = []
            calls: list[dict[str, Any]] = []
            for part in (candidate.get("content") or {}).get("parts") or []:
                if "functionCall" in part:
                    fc = part["functionCall"]
                    call = translate.tool_call(
                        fc.get("id") or translate.tool_call_id(), fc["name"], fc.get("args")
                    )
                    calls.append(_with_signature(call, part))
                elif "text" in part and not part.get("thought"):
                    text.append(part["text"])
            finish = translate.finish_reason(
                translate.GEMINI_FINISH, candidate.get("finishReason"), bool(calls)
            )
            index = int(candidate.get("index", position))
            choices.append(translate.choice(index, "".join(text), calls, finish))
        if not choices:
            # the prompt itself was blocked (promptFeedback.blockReason)
            choices.append(translate.choice(0, "", [], "content_filter"))
        return translate.completion(
            id=str(data.get("responseId") or translate.new_id("chatcmpl-")),
            model=str(data.get("modelVersion") or model),
            choices=choices,
            usage=_usage(data),
        )

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        body = build_body(request, self.config)
        url = f"/v1beta/{_model_path(request.model)}:streamGenerateContent"
        response = await self._open("POST", url, params={"alt": "sse"}, json=body)
        try:
            async for chunk in translate.role_with_first_content(
                self._chunks(response, request.model)
            ):
                yield chunk
        finally:
            await response.aclose()

    async def _chunks(self, response: httpx.Response, model: str) -> AsyncIterator[dict[str, Any]]:
        maker = translate.ChunkMaker(translate.new_id("chatcmpl-"), model)
        started: set[int] = set()
        tools: dict[int, int] = {}  # candidate index → tool calls so far
        finishes: dict[int, str] = {}
        usage = translate.usage(0, 0)
        seen_any = False
        async for event in vendor_http.iter_sse(self.name, response):
            data = vendor_http.loads_object(self.name, event.data)
            if "error" in data:
                error = data["error"] or {}
                raise vendor_http.error_for_status(
                    self.name,
                    int(error.get("code") or 500),
                    f"{error.get('status', 'ERROR')}: {error.get('message', '')}",
                )
            seen_any = True
            try:
                if data.get("responseId"):
                    maker.id = str(data["responseId"])
                if data.get("modelVersion"):
                    maker.model = str(data["modelVersion"])
                if data.get("usageMetadata"):
                    usage = _usage(data)
                candidates = data.get("candidates") or []
                if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
                    finishes[0] = "content_filter"
                for position, candidate in enumerate(candidates):
                    index = int(candidate.get("index", position))
                    if index not in started:
                        started.add(index)
                        yield maker.role(index)
                    for part in (candidate.get("content") or {}).get("parts") or []:
                        if "functionCall" in part:
                            fc = part["functionCall"]
                            n = tools.get(index, 0)
                            tools[index] = n + 1
                            chunk = maker.tool_start(
                                n,
                                fc.get("id") or translate.tool_call_id(),
                                fc["name"],
                                translate.dump_arguments(fc.get("args")),
                                index=index,
                            )
                            _with_signature(chunk["choices"][0]["delta"]["tool_calls"][0], part)
                            yield chunk
                        elif part.get("text") and not part.get("thought"):
                            yield maker.text(part["text"], index)
                    if candidate.get("finishReason"):
                        finishes[index] = translate.finish_reason(
                            translate.GEMINI_FINISH,
                            candidate["finishReason"],
                            bool(tools.get(index)),
                        )
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                raise vendor_http.malformed(self.name, f"unexpected chunk shape: {exc!r}") from None
        if not finishes:
            raise vendor_http.broken_stream(
                self.name, "no finishReason" if seen_any else "empty stream"
            )
        for index in sorted(finishes):
            if index not in started:
                yield maker.role(index)
            yield maker.finish(finishes[index], index)
        yield maker.usage(usage)

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        model = _model_path(request.model)
        dims = request.params.get("dimensions")
        requests = []
        for text in request.input:
            item: dict[str, Any] = {"model": model, "content": {"parts": [{"text": text}]}}
            if dims:
                item["outputDimensionality"] = int(dims)
            requests.append(item)
        # batchEmbedContents refuses more than EMBED_BATCH requests in one call
        batches = [requests[i : i + EMBED_BATCH] for i in range(0, len(requests), EMBED_BATCH)]
        slots = asyncio.Semaphore(EMBED_CONCURRENCY)

        async def embed_batch(batch: list[dict[str, Any]]) -> list[Any]:
            async with slots:
                data = await self._json(
                    "POST", f"/v1beta/{model}:batchEmbedContents", json={"requests": batch}
                )
            try:
                vectors = [e["values"] for e in data["embeddings"]]
            except (KeyError, TypeError) as exc:
                raise vendor_http.malformed(
                    self.name, f"unexpected embeddings shape: {exc!r}"
                ) from None
            if len(vectors) != len(batch):
                raise vendor_http.malformed(
                    self.name, f"{len(vectors)} embeddings for {len(batch)} inputs"
                )
            return vectors

        if len(batches) == 1:
            results = [await embed_batch(batches[0])]
        else:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(embed_batch(b)) for b in batches]
            results = [task.result() for task in tasks]
        vectors = [v for batch in results for v in batch]
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ],
            "model": request.model,
            # batchEmbedContents reports no token counts
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }

    async def list_models(self) -> list[ModelInfo]:
        if self.config.get("models"):
            return [ModelInfo(id=str(m), owned_by="google") for m in self.config["models"]]
        models: list[ModelInfo] = []
        page: str | None = None
        while True:
            params = {"pageSize": "1000", **({"pageToken": page} if page else {})}
            data = await self._json("GET", "/v1beta/models", params=params)
            for m in data.get("models") or []:
                name = str(m.get("name", "")).removeprefix("models/")
                models.append(
                    ModelInfo(id=name, owned_by="google", context_window=m.get("inputTokenLimit"))
                )
            page = data.get("nextPageToken")
            if not page:
                return models

    async def aclose(self) -> None:
        await self.client.aclose()
