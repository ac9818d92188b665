"""The prompt store: versions, labels, history, A/B, sandboxed rendering, tenant isolation."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from libs.errors import NotFound, ValidationFailed
from libs.identity import Principal
from libs.testing import auth_headers, client_for, principal
from services.llm.prompts.service import resolve_prompt
from tests.support.faults.outages import assert_unavailable, database_down
from tests.support.stacks.llm_store import store_app

V1 = {
    "messages": [
        {"role": "system", "content": "You are {{ persona }}."},
        {"role": "user", "content": "Summarize: {{ text }}"},
    ],
    "model": "default",
    "params": {"temperature": 0.2},
    "commit_message": "first",
    "labels": ["production"],
}


def h(p: Principal) -> dict[str, str]:
    return auth_headers(p)


async def make_prompt(
    c: httpx.AsyncClient, p: Principal, name: str = "summarize", **version: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "description": "d", "version": {**V1, **version}}
    resp = await c.post("/v1/prompts", json=body, headers=h(p))
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def add_version(
    c: httpx.AsyncClient, p: Principal, ref: str, **changes: Any
) -> dict[str, Any]:
    body = {**V1, "labels": [], **changes}
    resp = await c.post(f"/v1/prompts/{ref}/versions", json=body, headers=h(p))
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def test_versions_labels_rollback_and_history(c: httpx.AsyncClient) -> None:
    alice = principal()
    bob = principal(org_id=alice.org_id)
    prompt = await make_prompt(c, alice)
    pid = prompt["id"]
    assert prompt["latest_version"] == 1
    assert [t["version"] for t in prompt["labels"]["production"]] == [1]

    dup = await c.post("/v1/prompts", json={"name": "summarize"}, headers=h(bob))
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "name_taken"

    v2 = await add_version(
        c,
        bob,
        "summarize",
        messages=[{"role": "user", "content": "TL;DR {{ text }}"}],
        commit_message="shorter",
        labels=["staging"],
    )
    assert v2["version"] == 2 and v2["labels"] == ["staging"]
    assert v2["template_variables"] == ["text"]

    # version 1 is untouched by version 2, and there is no way to edit a version
    v1 = (await c.get(f"/v1/prompts/{pid}/versions/1", headers=h(alice))).json()
    assert v1["messages"] == V1["messages"] and v1["commit_message"] == "first"
    assert v1["labels"] == ["production"]
    assert v1["created_by"]["user_id"] == str(alice.user_id)
    for method in ("PUT", "PATCH", "DELETE"):
        resp = await c.request(method, f"/v1/prompts/{pid}/versions/1", json={}, headers=h(alice))
        assert resp.status_code == 405, method

    # move production to 2, then roll it back
    moved = await c.put(f"/v1/prompts/{pid}/labels/production", json={"version": 2}, headers=h(bob))
    assert moved.status_code == 200, moved.text
    assert [t["version"] for t in moved.json()["labels"]["production"]] == [2]
    rendered = await c.post(
        f"/v1/prompts/{pid}/render", json={"variables": {"text": "x"}}, headers=h(alice)
    )
    assert rendered.json()["version"] == 2 and rendered.json()["label"] == "production"

    back = await c.post(f"/v1/prompts/{pid}/labels/production/rollback", headers=h(alice))
    assert back.status_code == 200, back.text
    assert [t["version"] for t in back.json()["labels"]["production"]] == [1]

    # a label never moved before has nothing to roll back to
    nothing = await c.post(f"/v1/prompts/{pid}/labels/staging/rollback", headers=h(alice))
    assert nothing.status_code == 409 and nothing.json()["error"]["code"] == "nothing_to_roll_back"

    versions = (await c.get(f"/v1/prompts/{pid}/versions", headers=h(alice))).json()
    assert [v["version"] for v in versions["data"]] == [2, 1]

    history = (await c.get(f"/v1/prompts/{pid}/history", headers=h(alice))).json()["data"]
    steps = [(e["action"], e["label"], e["actor"]["user_id"]) for e in history]
    a, b = str(alice.user_id), str(bob.user_id)
    assert steps == [
        ("label.moved", "production", a),  # the rollback
        ("label.moved", "production", b),
        ("label.moved", "staging", b),
        ("version.created", None, b),
        ("label.moved", "production", a),
        ("version.created", None, a),
        ("prompt.created", None, a),
    ]
    rollback, move = history[0], history[1]
    assert [t["version"] for t in move["before"]] == [1]
    assert [t["version"] for t in move["after"]] == [2]
    assert rollback["before"] == move["after"] and rollback["after"] == move["before"]
    only = (await c.get(f"/v1/prompts/{pid}/history?label=staging", headers=h(alice))).json()[
        "data"
    ]
    assert [e["label"] for e in only] == ["staging"]

    # labels can be removed; reserved and unknown ones are refused
    assert (
        await c.delete(f"/v1/prompts/{pid}/labels/staging", headers=h(alice))
    ).status_code == 204
    resp = await c.put(f"/v1/prompts/{pid}/labels/latest", json={"version": 1}, headers=h(alice))
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "reserved_label"
    resp = await c.put(f"/v1/prompts/{pid}/labels/qa", json={"version": 9}, headers=h(alice))
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "prompt_version_not_found"
    resp = await c.post(
        f"/v1/prompts/{pid}/render", json={"label": "staging", "variables": {}}, headers=h(alice)
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "prompt_label_not_found"


async def test_versions_are_immutable_in_the_database(
    c: httpx.AsyncClient, db: AsyncConnection
) -> None:
    p = principal()
    prompt = await make_prompt(c, p)
    with pytest.raises(DBAPIError, match="immutable"):
        async with db.begin_nested():
            await db.execute(
                text("UPDATE llm.prompt_versions SET commit_message = 'x' WHERE prompt_id = :p"),
                {"p": prompt["id"]},
            )


async def test_tenant_isolation(c: httpx.AsyncClient) -> None:
    alice, mallory = principal(), principal()
    prompt = await make_prompt(c, alice)
    pid = prompt["id"]
    # the same name in another organization is another prompt
    theirs = await make_prompt(c, mallory)
    assert theirs["id"] != pid

    listing = (await c.get("/v1/prompts", headers=h(mallory))).json()
    assert [p["id"] for p in listing["data"]] == [theirs["id"]]

    attempts: list[tuple[str, str, Any]] = [
        ("GET", f"/v1/prompts/{pid}", None),
        ("PATCH", f"/v1/prompts/{pid}", {"description": "x"}),
        ("GET", f"/v1/prompts/{pid}/versions", None),
        ("GET", f"/v1/prompts/{pid}/versions/1", None),
        ("POST", f"/v1/prompts/{pid}/versions", {**V1, "labels": []}),
        ("PUT", f"/v1/prompts/{pid}/labels/production", {"version": 1}),
        ("DELETE", f"/v1/prompts/{pid}/labels/production", None),
        ("POST", f"/v1/prompts/{pid}/labels/production/rollback", None),
        ("GET", f"/v1/prompts/{pid}/history", None),
        ("POST", f"/v1/prompts/{pid}/render", {"variables": {"persona": "a", "text": "b"}}),
    ]
    for method, path, body in attempts:
        resp = await c.request(method, path, json=body, headers=h(mallory))
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["error"]["code"] == "prompt_not_found"
    # nothing of alice's changed
    mine = (await c.get(f"/v1/prompts/{pid}/history", headers=h(alice))).json()["data"]
    assert len(mine) == 3


async def test_rendering_variables_and_sandbox(c: httpx.AsyncClient) -> None:
    p = principal()
    await make_prompt(
        c,
        p,
        variables={
            "properties": {
                "persona": {"type": "string", "default": "a pirate"},
                "text": {"type": "string"},
            },
            "required": ["text"],
        },
    )
    ok = await c.post(
        "/v1/prompts/summarize/render", json={"variables": {"text": "hello"}}, headers=h(p)
    )
    assert ok.status_code == 200, ok.text
    out = ok.json()
    assert out["messages"] == [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Summarize: hello"},
    ]
    assert (out["model"], out["params"], out["version"]) == ("default", {"temperature": 0.2}, 1)

    missing = await c.post("/v1/prompts/summarize/render", json={"variables": {}}, headers=h(p))
    assert missing.status_code == 422
    err = missing.json()["error"]
    assert err["code"] == "missing_variable" and "text" in err["message"]
    assert [d["variable"] for d in err["details"]] == ["text"]

    wrong = await c.post(
        "/v1/prompts/summarize/render", json={"variables": {"text": 3}}, headers=h(p)
    )
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_variable"

    # without a schema, StrictUndefined still names what is missing
    await make_prompt(c, p, name="bare", messages=[{"role": "user", "content": "{{ a }}{{ b }}"}])
    resp = await c.post("/v1/prompts/bare/render", json={"variables": {"a": 1}}, headers=h(p))
    assert resp.status_code == 422 and resp.json()["error"]["details"][0]["variable"] == "b"
    resp = await c.post(
        "/v1/prompts/bare/render", json={"variables": {"a": {"x": 1}, "b": ""}}, headers=h(p)
    )
    assert resp.json()["messages"][0]["content"] == "{'x': 1}"
    # optional variables: `default` and `is defined` work under StrictUndefined
    await make_prompt(
        c,
        p,
        name="optional",
        messages=[
            {
                "role": "user",
                "content": "Hi {{ who | default('friend') }}"
                "{% if extra is defined %} ({{ extra }}){% endif %}",
            }
        ],
    )
    resp = await c.post("/v1/prompts/optional/render", json={"variables": {}}, headers=h(p))
    assert resp.json()["messages"][0]["content"] == "Hi friend"
    resp = await c.post(
        "/v1/prompts/optional/render",
        json={"variables": {"who": "Ann", "extra": "vip"}},
        headers=h(p),
    )
    assert resp.json()["messages"][0]["content"] == "Hi Ann (vip)"

    # escapes: refused when the version is created...
    for source in (
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ x['__class__'] }}",
        "{{ x|attr('__globals__') }}",
        "{{ x|attr(name) }}",
    ):
        resp = await c.post(
            "/v1/prompts",
            json={"name": "evil", "version": {"messages": [{"role": "user", "content": source}]}},
            headers=h(p),
        )
        assert resp.status_code == 422, source
        assert resp.json()["error"]["code"] == "unsafe_template"
    # ...and by the sandbox at render time (mutating inputs, huge ranges)
    await make_prompt(
        c, p, name="mutate", messages=[{"role": "user", "content": "{{ d.update({'k': 1}) }}"}]
    )
    resp = await c.post("/v1/prompts/mutate/render", json={"variables": {"d": {}}}, headers=h(p))
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "unsafe_template"
    await make_prompt(
        c,
        p,
        name="loop",
        messages=[{"role": "user", "content": "{% for i in range(10**9) %}x{% endfor %}"}],
    )
    resp = await c.post("/v1/prompts/loop/render", json={"variables": {}}, headers=h(p))
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "unsafe_template"

    resp = await c.post(
        "/v1/prompts",
        json={"name": "broken", "version": {"messages": [{"role": "user", "content": "{{ x"}]}},
        headers=h(p),
    )
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "template_syntax_error"
    # the refused prompts were not half-created
    assert (await c.get("/v1/prompts/broken", headers=h(p))).status_code == 404
    assert (await c.get("/v1/prompts/evil", headers=h(p))).status_code == 404


async def test_weighted_ab(c: httpx.AsyncClient, db: AsyncConnection) -> None:
    p = principal()
    await make_prompt(c, p)
    await add_version(c, p, "summarize", commit_message="b")
    resp = await c.put(
        "/v1/prompts/summarize/labels/production",
        json={"versions": [{"version": 1, "weight": 80}, {"version": 2, "weight": 20}]},
        headers=h(p),
    )
    assert resp.status_code == 200, resp.text
    assert {t["version"]: t["weight"] for t in resp.json()["labels"]["production"]} == {
        1: 80,
        2: 20,
    }

    assert p.org_id is not None
    variables = {"persona": "x", "text": "y"}
    async with AsyncSession(bind=db, join_transaction_mode="create_savepoint") as session:
        counts: Counter[int] = Counter()
        for i in range(2000):
            r = await resolve_prompt(
                session, p.org_id, "summarize", variables=variables, request_id=f"req-{i}"
            )
            counts[r.version_number] += 1
        # deterministic per request id: 80/20 within a few percent
        assert 1520 <= counts[1] <= 1680, counts
        again = await resolve_prompt(
            session, p.org_id, "summarize", variables=variables, request_id="req-7"
        )
        first = await resolve_prompt(
            session, p.org_id, "summarize", variables=variables, request_id="req-7"
        )
        assert again.version_id == first.version_id
        # an explicit version or "latest" bypasses the label
        pinned = await resolve_prompt(
            session, p.org_id, "summarize", version=2, variables=variables
        )
        assert (pinned.version_number, pinned.label) == (2, None)
        latest = await resolve_prompt(
            session, p.org_id, "summarize", label="latest", variables=variables
        )
        assert latest.version_number == 2
        with pytest.raises(NotFound):
            await resolve_prompt(session, uuid.uuid4(), "summarize", variables=variables)
        with pytest.raises(ValidationFailed):
            await resolve_prompt(session, p.org_id, "summarize", variables={})

    # a sticky ab_key always gets the same version
    seen = set()
    for _ in range(5):
        resp = await c.post(
            "/v1/prompts/summarize/render",
            json={"variables": variables, "ab_key": "user-42"},
            headers=h(p),
        )
        seen.add(resp.json()["version"])
    assert len(seen) == 1


async def test_bad_input_and_auth(c: httpx.AsyncClient) -> None:
    p = principal()
    resp = await c.post(
        "/v1/prompts",
        json={
            "name": "has space",
            "bogus": 1,
            "version": {"messages": [], "params": {"model": "x"}},
        },
        headers=h(p),
    )
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert err["code"] == "validation_error" and err["request_id"]
    fields = {d["field"] for d in err["details"]}
    assert {"body.name", "body.bogus", "body.version.messages", "body.version.params"} <= fields

    resp = await c.post("/v1/prompts", json={"name": str(uuid.uuid4())}, headers=h(p))
    assert resp.status_code == 422
    # a version's params must make a valid chat request
    resp = await c.post(
        "/v1/prompts",
        json={"name": "hot", "version": {**V1, "params": {"temperature": 5}}},
        headers=h(p),
    )
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_params"
    assert resp.json()["error"]["details"][0]["field"] == "body.params.temperature"
    assert (await c.get("/v1/prompts/hot", headers=h(p))).status_code == 404
    await make_prompt(c, p)
    body: dict[str, Any]
    for body in ({}, {"version": 1, "versions": [{"version": 1}]}, {"versions": []}):
        resp = await c.put("/v1/prompts/summarize/labels/x", json=body, headers=h(p))
        assert resp.status_code == 422, body
    resp = await c.put("/v1/prompts/summarize/labels/Bad Label", json={"version": 1}, headers=h(p))
    assert resp.status_code == 422

    assert (await c.get("/v1/prompts")).status_code == 401
    viewer = principal(org_id=p.org_id, scopes=["rag:read"])
    resp = await c.get("/v1/prompts", headers=h(viewer))
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "insufficient_scope"


async def test_database_down_is_503_not_500(
    db: AsyncConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the llm loads SQLAlchemy late, so it has no storage error handlers: the outage is told
    # apart where unhandled exceptions are answered (libs.storage_errors)
    app = store_app(tmp_path, monkeypatch)
    async with client_for(app, connection=db) as c:
        await _database_down_checks(app, c)


async def _database_down_checks(app: FastAPI, c: httpx.AsyncClient) -> None:
    p = principal()
    await make_prompt(c, p)
    async with database_down(app):
        resp = await c.get("/v1/prompts", headers=h(p))
        assert_unavailable(resp, "database")
        # the hot chat route, with a stored prompt to render: OpenAI's shape
        resp = await c.post(
            "/v1/chat/completions",
            json={"model": "default", "prompt": {"name": "summarize", "label": "production"}},
            headers=h(p),
        )
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "2"
        assert resp.json()["error"]["code"] == "service_unavailable"
        assert "type" in resp.json()["error"]  # OpenAI's shape
    assert (await c.get("/v1/prompts", headers=h(p))).status_code == 200
