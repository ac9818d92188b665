"""Reading a batch's input file: its request lines, the lines that are malformed (reported in
the error file, the batch goes on), and what fails the whole batch (OpenAI's ``errors``)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Request:
    line: int  # 0-based line number in the file
    custom_id: str
    body: dict[str, Any]


@dataclass
class Plan:
    requests: list[Request] = field(default_factory=list)
    # malformed lines: (line, custom_id if any, error code, message)
    malformed: list[tuple[int, str | None, str, str]] = field(default_factory=list)
    # what fails the batch: OpenAI's BatchError objects
    errors: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None

    @property
    def total(self) -> int:
        return len(self.requests) + len(self.malformed)


def _error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict:
    return {"code": code, "message": message, "line": line, "param": param}


def parse(data: bytes, endpoint: str, max_lines: int) -> Plan:
    """Read a JSONL input file for ``endpoint``. Errors name 1-based line numbers, as
    OpenAI's do."""
    plan = Plan()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        plan.errors.append(_error("invalid_file_format", "The input file is not UTF-8 JSONL."))
        return plan
    seen: dict[str, int] = {}
    parsed = 0
    for n, raw in enumerate(text.splitlines()):
        if not raw.strip():
            continue
        if plan.total >= max_lines:
            plan.errors.append(
                _error("too_many_requests", f"The input file has more than {max_lines} requests.")
            )
            return plan
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            plan.malformed.append((n, None, "invalid_json_line", "This line is not valid JSON."))
            continue
        if not isinstance(obj, dict):
            plan.malformed.append((n, None, "invalid_json_line", "This line is not a JSON object."))
            continue
        parsed += 1
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            plan.malformed.append(
                (n, None, "missing_required_parameter", "The line has no custom_id string.")
            )
            continue
        if custom_id in seen:
            plan.errors.append(
                _error(
                    "duplicate_custom_id",
                    f"The custom_id '{custom_id[:80]}' is also on line {seen[custom_id] + 1}; "
                    "each request needs its own.",
                    n + 1,
                    "custom_id",
                )
            )
            continue
        seen[custom_id] = n
        url = obj.get("url")
        if url != endpoint:
            plan.errors.append(
                _error(
                    "invalid_url",
                    f"The url '{str(url)[:100]}' does not match the batch's endpoint {endpoint}.",
                    n + 1,
                    "url",
                )
            )
            continue
        body = obj.get("body")
        if obj.get("method", "POST") != "POST" or not isinstance(body, dict):
            plan.malformed.append(
                (n, custom_id, "invalid_request", "A line needs method POST and a JSON body.")
            )
            continue
        body.pop("stream", None)  # a batch's answers are whole responses
        if plan.model is None and isinstance(body.get("model"), str):
            plan.model = body["model"]
        plan.requests.append(Request(n, custom_id, body))
    if parsed == 0 and not plan.errors:
        plan.errors.append(
            _error(
                "invalid_file_format",
                "The input file has no JSON lines: it must be JSONL, one request per line.",
            )
        )
    return plan


def request_id() -> str:
    return f"batch_req_{secrets.token_hex(16)}"


def error_line(custom_id: str | None, code: str, message: str) -> str:
    """An error file line (JSON, no newline) for a request that got no answer."""
    return orjson.dumps(
        {
            "id": request_id(),
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }
    ).decode()


def response_line(custom_id: str, status: int, req_id: str, body: bytes) -> str:
    """An output (2xx) or error file line for a request the llm answered with the JSON
    ``body``, which goes in as it came (not parsed and written again)."""
    if not body.strip() or b"\n" in body:
        # no body, or one on several lines (JSONL needs one): parsed and written compactly
        try:
            body = orjson.dumps(orjson.loads(body))
        except orjson.JSONDecodeError:
            body = orjson.dumps({"error": {"message": body.decode("utf-8", "replace")[:2000]}})
    head = orjson.dumps({"id": req_id, "custom_id": custom_id})[:-1]
    return (
        head
        + b',"response":{"status_code":%d,"request_id":' % status
        + orjson.dumps(req_id)
        + b',"body":'
        + body
        + b'},"error":null}'
    ).decode("utf-8", "replace")
