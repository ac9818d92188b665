"""JSON request bodies checked once, for every app, before any route reads them.

What no service can store or compute with is refused as ``400 invalid_value`` naming where it
is (``param`` on OpenAI's routes), instead of failing later as a 500: strings holding NUL or a
lone UTF-16 surrogate (PostgreSQL stores neither; a surrogate cannot be encoded as UTF-8),
integers outside the signed 64-bit range (no column, offset or counter takes them), and
numbers too large for a double (``1e400``). A body that is not JSON at all passes on: each
route answers that in its own words, as before.

The common case costs one parse with orjson, which refuses surrogates and infinite numbers
itself; the standard library's exact parse runs only when the raw body holds a ``\\u0000``
escape or a run of 19 or more digits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_LONG_NUMBER = re.compile(rb"\d{19,}")
_NUL_ESCAPE = b"\\u0000"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class UnusableValue(ValueError):
    """A JSON value no service can take; ``param`` says where it is."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def check(raw: bytes) -> None:
    """Raise :class:`UnusableValue` for what the module docstring lists; return quietly for
    a usable body and for one that is not JSON (its route answers that)."""
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        _explain_refusal(raw, exc)
        return
    if _NUL_ESCAPE in raw or _LONG_NUMBER.search(raw):
        for param, value in _walk(json.loads(raw), ""):
            _check_value(param, value)


def _explain_refusal(raw: bytes, exc: orjson.JSONDecodeError) -> None:
    # orjson refuses lone surrogates and infinite numbers, which the standard library (and
    # so FastAPI) would accept; whatever it also cannot read is not JSON: the route says so
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return
    for param, value in _walk(data, ""):
        _check_value(param, value)
    raise UnusableValue(f"The JSON body cannot be used: {exc.msg}", None)


def _check_value(param: str, value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise UnusableValue("Text may not contain the NUL character (\\u0000)", param or None)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UnusableValue(
                "Text may not contain a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff)",
                param or None,
            ) from None
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise UnusableValue("Integers must fit in 64 bits (signed)", param or None)
    elif isinstance(value, float) and value in (float("inf"), float("-inf")):
        raise UnusableValue("Numbers must be finite", param or None)


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every key and scalar of ``value`` with its path (``messages[0].content``)."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                yield where, key
                stack.append((f"{where}.{key}" if where else str(key), child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(item))
        else:
            yield where, item


def _is_json(scope: Scope) -> bool:
    for key, value in scope["headers"]:
        if key == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or kind.endswith(b"+json")
    return True  # FastAPI reads a body without a content type as JSON


class JsonGuardMiddleware:
    """Read a JSON request body whole, refuse it when :func:`check` does, else hand it on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.app(scope, _replay([], message, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            check(body)
        except UnusableValue as exc:
            from libs.errors import error_response, wants_openai

            openai = wants_openai(scope)
            # OpenAI's param is the value's path; aistack's field is rooted at the body
            where = exc.param if openai else _field(exc.param)
            details = [{"field": where, "message": exc.message, "type": "invalid_value"}]
            response = error_response(400, "invalid_value", exc.message, details, openai=openai)
            await response(scope, receive, send)
            return
        done: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([done], None, receive), send)


def _field(param: str | None) -> str:
    if not param:
        return "body"
    return f"body{param}" if param.startswith("[") else f"body.{param}"


def _replay(messages: list[Message], last: Message | None, receive: Receive) -> Receive:
    pending = list(messages) + ([last] if last is not None else [])

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


# what check() refuses, published in the OpenAPI document (a JSON Schema cannot say "no lone
# surrogate", and JSON cannot carry one that a client's encoder would send)
NO_NUL = "^[^\\u0000]*$"
_NOT_SCHEMAS = ("examples", "example", "default", "const", "enum")


def _reachable(doc: dict[str, Any], roots: list[Any]) -> set[str]:
    """The components' schema names ``roots`` refer to, directly or not."""
    names: set[str] = set()
    components = doc.get("components", {}).get("schemas", {})
    stack = list(roots)
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in names and name in components:
                    names.add(name)
                    stack.append(components[name])
            stack.extend(v for k, v in node.items() if k not in _NOT_SCHEMAS)
    return names


# any JSON value a request may hold where its schema leaves it free (extra fields, Any)
USABLE_JSON = "UsableJsonValue"
_USABLE_REF = {"$ref": f"#/components/schemas/{USABLE_JSON}"}
_USABLE_SCHEMA = {
    "description": "Any JSON value, but text without NUL (\\u0000) nor a lone UTF-16 "
    "surrogate, and integers that fit in 64 bits (signed), as every request body must",
    "anyOf": [
        {"type": "string", "pattern": NO_NUL},
        {"type": "integer", "format": "int64"},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": _USABLE_REF},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": _USABLE_REF,
        },
    ],
}
_SHAPES = {"type", "anyOf", "oneOf", "allOf", "$ref", "enum", "const", "not", "properties"}


def _free(schema: Any) -> bool:
    """A schema that allows any value (pydantic's ``Any``, ``additionalProperties: true``)."""
    return schema is True or (isinstance(schema, dict) and not _SHAPES & schema.keys())


def _mark(node: Any, *, text: bool) -> None:
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if kind == "integer" and "format" not in node:
            node["format"] = "int64"
        elif text and kind == "string" and not {"pattern", "format", "enum", "const"} & node.keys():
            node["pattern"] = NO_NUL
        if text and kind == "object":
            names = node.setdefault("propertyNames", {})
            if isinstance(names, dict):
                names.setdefault("pattern", NO_NUL)
            if node.get("additionalProperties", True) is True:  # absent: anything
                node["additionalProperties"] = _USABLE_REF
        if text:
            if "items" in node and _free(node["items"]):
                node["items"] = _USABLE_REF
            for name, prop in node.get("properties", {}).items():
                if _free(prop):
                    node["properties"][name] = {**prop, **_USABLE_REF}
        stack.extend(v for k, v in node.items() if k not in _NOT_SCHEMAS)


def describe(doc: dict[str, Any]) -> None:
    """Mark in ``doc`` (an OpenAPI document, changed in place) the limits :func:`check`
    applies to every JSON request body: integers are 64-bit (``format: int64``) and text
    without a pattern or format of its own may not hold NUL (only in schemas no answer uses:
    an answer may relay a model's text as it is)."""
    bodies: list[Any] = []
    answers: list[Any] = []
    for item in doc.get("paths", {}).values():
        for op in item.values():
            if isinstance(op, dict):
                for media in op.get("requestBody", {}).get("content", {}).values():
                    bodies.append(media.get("schema"))
                answers.append(op.get("responses"))
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault(USABLE_JSON, _USABLE_SCHEMA)
    answered = _reachable(doc, answers)
    for name in _reachable(doc, bodies):
        _mark(components[name], text=name not in answered)
    _mark(bodies, text=True)
