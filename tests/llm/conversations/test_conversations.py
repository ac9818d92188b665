"""Conversations: owner-only access, cursor pages, export, history trimming, storing replies."""

# ruff: noqa: RUF001  (text in other scripts, punctuation included)

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from libs import tokens
from libs.errors import NotFound
from libs.identity import Principal
from libs.testing import auth_headers, principal
from services.llm.conversations.service import load_history, store_exchange, trim_to_budget
from services.llm.tokens import tokenizer
from services.llm.tokens.tokenizer import TokenPlan


def h(p: Principal) -> dict[str, str]:
    return auth_headers(p)


def api_key(org_id: uuid.UUID | None) -> Principal:
    """An API key that acts for no user."""
    return Principal(org_id=org_id, key_id=uuid.uuid4(), scopes=["llm:use"])


async def create(c: httpx.AsyncClient, p: Principal, **body: Any) -> dict[str, Any]:
    resp = await c.post("/v1/conversations", json=body, headers=h(p))
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def test_numbers_past_64_bits_come_back_as_they_went_in(c: httpx.AsyncClient) -> None:
    """JSONB keeps 1e30 as numeric; read back as an integer it could not be exported (500)."""
    p = principal()
    conv = await create(c, p, metadata={"big": 1e30, "small": -2.5e-300, "n": 2**63 - 1})
    export = await c.get(f"/v1/conversations/{conv['id']}/export", headers=h(p))
    assert export.status_code == 200, export.text
    assert export.json()["conversation"]["metadata"] == {
        "big": 1e30,
        "small": -2.5e-300,
        "n": 2**63 - 1,
    }


async def test_crud_export_and_messages(c: httpx.AsyncClient) -> None:
    p = principal()
    conv = await create(
        c,
        p,
        title="Trip",
        model="default",
        metadata={"app": "web"},
        messages=[{"role": "system", "content": "Be brief."}],
    )
    cid = conv["id"]
    assert (conv["title"], conv["model"], conv["metadata"]) == ("Trip", "default", {"app": "web"})
    assert [m["role"] for m in conv["messages"]] == ["system"] and conv["message_count"] == 1

    tool_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    resp = await c.post(
        f"/v1/conversations/{cid}/messages",
        json={
            "messages": [
                {"role": "user", "content": "Where to?"},
                {"role": "assistant", "content": None, "tool_calls": [tool_call]},
                {"role": "tool", "tool_call_id": "c1", "content": "Lisbon"},
            ]
        },
        headers=h(p),
    )
    assert resp.status_code == 201, resp.text
    assert [m["seq"] for m in resp.json()["data"]] == [2, 3, 4]

    renamed = await c.patch(f"/v1/conversations/{cid}", json={"title": "Lisbon"}, headers=h(p))
    assert renamed.status_code == 200 and renamed.json()["title"] == "Lisbon"
    assert renamed.json()["metadata"] == {"app": "web"}

    got = (await c.get(f"/v1/conversations/{cid}", headers=h(p))).json()
    assert got["message_count"] == 4
    assert [m["role"] for m in got["messages"]] == ["system", "user", "assistant", "tool"]
    assert got["messages"][2]["tool_calls"] == [tool_call]
    assert got["messages"][3]["tool_call_id"] == "c1"

    export = await c.get(f"/v1/conversations/{cid}/export", headers=h(p))
    assert export.status_code == 200
    assert export.headers["content-type"] == "application/json"
    assert f'filename="conversation-{cid}.json"' in export.headers["content-disposition"]
    data = export.json()
    assert data["object"] == "conversation.export" and data["format_version"] == 1
    assert data["conversation"]["id"] == cid and data["conversation"]["title"] == "Lisbon"
    assert [m["content"] for m in data["messages"]] == ["Be brief.", "Where to?", None, "Lisbon"]

    assert (await c.delete(f"/v1/conversations/{cid}", headers=h(p))).status_code == 204
    assert (await c.get(f"/v1/conversations/{cid}", headers=h(p))).status_code == 404


async def test_only_the_owner_sees_a_conversation(c: httpx.AsyncClient) -> None:
    alice = principal()
    bob = principal(org_id=alice.org_id)  # same organization, another user
    mallory = principal()  # another organization
    key = api_key(alice.org_id)  # an API key with no user
    mine = await create(c, alice, title="mine")
    keys = await create(c, key, title="key's")

    for intruder, target in ((bob, mine), (mallory, mine), (key, mine), (alice, keys)):
        cid = target["id"]
        for method, path, body in (
            ("GET", f"/v1/conversations/{cid}", None),
            ("PATCH", f"/v1/conversations/{cid}", {"title": "x"}),
            ("DELETE", f"/v1/conversations/{cid}", None),
            ("GET", f"/v1/conversations/{cid}/export", None),
            ("POST", f"/v1/conversations/{cid}/messages", {"messages": [{"role": "user"}]}),
        ):
            resp = await c.request(method, path, json=body, headers=h(intruder))
            assert resp.status_code == 404, (method, path, resp.text)
            assert resp.json()["error"]["code"] == "conversation_not_found"

    def ids(resp: httpx.Response) -> list[str]:
        return [x["id"] for x in resp.json()["data"]]

    assert ids(await c.get("/v1/conversations", headers=h(alice))) == [mine["id"]]
    assert ids(await c.get("/v1/conversations", headers=h(key))) == [keys["id"]]
    assert ids(await c.get("/v1/conversations", headers=h(bob))) == []
    # nothing changed for the owner
    got = (await c.get(f"/v1/conversations/{mine['id']}", headers=h(alice))).json()
    assert got["title"] == "mine" and got["message_count"] == 0


async def test_cursor_pagination(c: httpx.AsyncClient) -> None:
    p = principal()
    made = [(await create(c, p, title=f"t{i}"))["id"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await c.get("/v1/conversations", params=params, headers=h(p))).json()
        seen += [x["id"] for x in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        assert page["has_more"] == (cursor is not None)
        if not cursor:
            break
    # newest first; created in one transaction, so ties are broken by id, stably
    assert sorted(seen) == sorted(made) and len(seen) == 5 and pages == 3
    resp = await c.get("/v1/conversations?cursor=garbage", headers=h(p))
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_cursor"


async def test_bad_input_writes_nothing(c: httpx.AsyncClient) -> None:
    p = principal()
    resp = await c.post(
        "/v1/conversations",
        json={
            "title": "x" * 501,
            "messages": [{"role": "user", "content": "ok"}, {"role": "wizard", "content": "?"}],
        },
        headers=h(p),
    )
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert err["code"] == "validation_error" and err["request_id"]
    assert {"body.title", "body.messages.1.role"} <= {d["field"] for d in err["details"]}
    assert (await c.get("/v1/conversations", headers=h(p))).json()["data"] == []

    conv = await create(c, p)
    cid = conv["id"]
    resp = await c.patch(f"/v1/conversations/{cid}", json={}, headers=h(p))
    assert resp.status_code == 422
    resp = await c.post(
        f"/v1/conversations/{cid}/messages",
        json={"messages": [{"role": "user", "content": "a"}, {"role": "nope"}]},
        headers=h(p),
    )
    assert resp.status_code == 422
    assert (await c.get(f"/v1/conversations/{cid}", headers=h(p))).json()["message_count"] == 0
    resp = await c.post("/v1/conversations", json={"metadata": {"k": "v" * 20_000}}, headers=h(p))
    assert resp.status_code == 422
    assert (await c.get("/v1/conversations/not-an-id", headers=h(p))).status_code == 422
    assert (await c.get("/v1/conversations")).status_code == 401


def turn(i: int, size: int = 40) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"q{i} " + "x" * size},
        {"role": "assistant", "content": f"a{i} " + "y" * size},
    ]


def test_trim_keeps_system_and_newest_whole_turns() -> None:
    system: dict[str, Any] = {"role": "system", "content": "rules " * 10}
    tool_turn: list[dict[str, Any]] = [
        {"role": "user", "content": "call"},
        {"role": "assistant", "tool_calls": [{"id": "t", "type": "function"}]},
        {"role": "tool", "tool_call_id": "t", "content": "r" * 40},
        {"role": "assistant", "content": "done"},
    ]
    history = [system, *turn(1), *turn(2), *tool_turn, *turn(3)]
    cost = tokenizer.message_bound

    def count(messages: list[dict[str, Any]]) -> int:
        return sum(cost(m) for m in messages)

    everything = count(history)
    assert trim_to_budget(history, everything, cost) == history
    # a budget too small for turn 1 drops it, and only it
    out = trim_to_budget(history, everything - 1, cost)
    assert out == [system, *turn(2), *tool_turn, *turn(3)]
    assert count(out) <= everything - 1
    # tighter: the tool turn goes whole (never a tool result without its call)
    budget = count([system, *turn(3)]) + 5
    assert trim_to_budget(history, budget, cost) == [system, *turn(3)]
    # nothing fits: the system message stays
    assert trim_to_budget(history, 0, cost) == [system]
    # turns older than the first that does not fit are never counted
    counted: list[dict[str, Any]] = []

    def counting(message: dict[str, Any]) -> int:
        counted.append(message)
        return cost(message)

    trim_to_budget(history, count([system, *turn(3)]), counting)
    assert counted == [system, *turn(3), *tool_turn]


GPT = TokenPlan("o200k_base")  # gpt-4o and later: counted exactly


async def test_load_history_and_store_exchange(c: httpx.AsyncClient, db: AsyncConnection) -> None:
    p = principal()
    msgs = [{"role": "system", "content": "Be brief."}]
    for i in range(10):
        msgs += turn(i)
    conv = await create(c, p, messages=msgs)
    cid = uuid.UUID(conv["id"])
    new = [{"role": "user", "content": "and now?"}]
    window, reserve = 200, 50
    enc = tokens.get_encoding("o200k_base")
    async with AsyncSession(bind=db, join_transaction_mode="create_savepoint") as session:
        full = await load_history(session, p, cid, 100_000, GPT)
        assert full == msgs
        history = await load_history(
            session, p, cid, window, GPT, reserve=reserve, new_messages=new
        )
        assert history[0] == msgs[0] and len(history) < len(msgs)
        assert history[-2:] == turn(9)  # the newest turns survive
        assert history[1]["role"] == "user"  # whole turns only
        assert tokenizer.count_messages(GPT, enc, history + new) <= window - reserve
        # one more turn would not have fit
        dropped = msgs[len(msgs) - len(history) - 1 : len(msgs) - len(history) + 1]
        assert tokenizer.count_messages(GPT, enc, [*history, *dropped, *new]) > window - reserve

        with pytest.raises(NotFound):
            await load_history(session, principal(org_id=p.org_id), cid, window, GPT)

        version_id = uuid.uuid4()
        usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
        rows = await store_exchange(
            session,
            cid,
            new,
            {"role": "assistant", "content": "Nothing.", "refusal": None},
            usage,
            version_id,
            request_id="chatcmpl-1",
        )
        assert [r.seq for r in rows] == [22, 23]
        assert await store_exchange(session, uuid.uuid4(), new, {"content": "x"}, None, None) == []
        await session.commit()

    got = (await c.get(f"/v1/conversations/{cid}", headers=h(p))).json()
    assert got["message_count"] == 23 and got["model"] is None
    last = got["messages"][-1]
    assert last == {
        **last,
        "role": "assistant",
        "content": "Nothing.",
        "usage": usage,
        "request_id": "chatcmpl-1",
        "prompt_version_id": str(version_id),
    }
    assert "refusal" not in last
    assert got["messages"][-2]["content"] == "and now?"


ZH_Q = "请根据我们之前讨论的内容，总结一下这个项目目前的进展、主要风险以及下一步的工作安排。"
ZH_A = "好的。目前数据迁移已经完成了大约八成，测试覆盖率在稳步提高；主要风险是第三方接口不稳定。"


def zh_turn(i: int) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"第{i}轮：" + ZH_Q * 3},
        {"role": "assistant", "content": f"第{i}轮：" + ZH_A * 3},
    ]


def chars_over_4(message: dict[str, Any]) -> int:
    """What trimming used to count: 4 per message plus ceil(chars / 4)."""
    return 4 + -(-len(str(message.get("content") or "")) // 4)


async def test_a_chinese_history_is_trimmed_to_what_really_fits(
    c: httpx.AsyncClient, db: AsyncConnection
) -> None:
    p = principal()
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "你是一个简洁的助手。"}]
    for i in range(40):
        msgs += zh_turn(i)
    cid = uuid.UUID((await create(c, p, messages=msgs))["id"])
    new = [{"role": "user", "content": "那么接下来呢？"}]
    window, reserve = 4096, 512
    budget = window - reserve
    enc = tokens.get_encoding("o200k_base")
    async with AsyncSession(bind=db, join_transaction_mode="create_savepoint") as session:
        history = await load_history(
            session, p, cid, window, GPT, reserve=reserve, new_messages=new
        )
        claude = tokenizer.plan_for_model("claude-sonnet-4-5")
        approx = await load_history(
            session, p, cid, window, claude, reserve=reserve, new_messages=new
        )
    assert history[0] == msgs[0] and history[1]["role"] == "user"
    assert history[-2:] == zh_turn(39)
    kept = (len(history) - 1) // 2
    # the exact count of what is sent fits; one more turn would not have
    assert tokenizer.count_messages(GPT, enc, history + new) <= budget
    older = zh_turn(39 - kept)
    assert tokenizer.count_messages(GPT, enc, [*history, *older, *new]) > budget
    # the chars / 4 estimate keeps more than twice as many turns: an upstream 400
    by_chars = trim_to_budget(msgs, budget - 3 - sum(map(chars_over_4, new)), chars_over_4)
    assert len(by_chars) - 1 > 2 * (len(history) - 1)
    assert tokenizer.count_messages(GPT, enc, by_chars + new) > window
    # a model counted approximately (o200k_base times the margin) keeps fewer turns, and its
    # margined count fits
    assert claude.margin > 1 and 2 < len(approx) < len(history)
    assert tokenizer.count_messages(claude, enc, approx + new) <= budget
    assert approx[-2:] == zh_turn(39) and approx[1]["role"] == "user"


async def test_an_english_history_that_fits_by_bytes_loads_no_tokenizer(
    c: httpx.AsyncClient, db: AsyncConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tokens.get_encoding("o200k_base")
    monkeypatch.setattr(tokens, "_encodings", {})
    builds: list[str] = []

    def build(name: str) -> Any:
        builds.append(name)
        return real

    monkeypatch.setattr(tokens, "build_encoding", build)
    p = principal()
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for i in range(20):
        msgs += turn(i, size=200)
    cid = uuid.UUID((await create(c, p, messages=msgs))["id"])
    new = [{"role": "user", "content": "and now?"}]
    size = tokenizer.bound_messages(msgs + new)  # ~10 KB: under 3k tokens in truth
    async with AsyncSession(bind=db, join_transaction_mode="create_savepoint") as session:
        history = await load_history(
            session, p, cid, size + 1000, GPT, reserve=1000, new_messages=new
        )
        assert history == msgs
        assert builds == [] and not tokens.loaded("o200k_base")
        # one byte less and it must count: the encoding loads (once) and the exact count
        # keeps everything, since the real tokens are far fewer than the bytes
        history = await load_history(
            session, p, cid, size + 999, GPT, reserve=1000, new_messages=new
        )
        assert history == msgs
        assert builds == ["o200k_base"] and tokens.loaded("o200k_base")
        assert tokenizer.count_messages(GPT, real, msgs + new) < size / 3
