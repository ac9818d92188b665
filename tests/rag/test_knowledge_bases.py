from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.testing import Infra, auth_headers, client_for, principal
from services.rag.app import build_app


async def test_crud_and_tenant_isolation(db: AsyncConnection) -> None:
    alice = principal()
    mallory = principal()
    async with client_for(build_app(), connection=db) as c:
        resp = await c.post(
            "/v1/knowledge-bases", json={"name": "Handbook"}, headers=auth_headers(alice)
        )
        assert resp.status_code == 201, resp.text
        kb = resp.json()
        dup = await c.post(
            "/v1/knowledge-bases", json={"name": "Handbook"}, headers=auth_headers(alice)
        )
        assert dup.status_code == 409 and dup.json()["error"]["code"] == "name_taken"
        # the same name in another organization is fine
        other = await c.post(
            "/v1/knowledge-bases", json={"name": "Handbook"}, headers=auth_headers(mallory)
        )
        assert other.status_code == 201

        listing = (await c.get("/v1/knowledge-bases", headers=auth_headers(alice))).json()
        assert [k["id"] for k in listing["data"]] == [kb["id"]]

        for method, body in (("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None)):
            resp = await c.request(
                method, f"/v1/knowledge-bases/{kb['id']}", json=body, headers=auth_headers(mallory)
            )
            assert resp.status_code == 404, (method, resp.text)
            assert resp.json()["error"]["code"] == "knowledge_base_not_found"

        resp = await c.patch(
            f"/v1/knowledge-bases/{kb['id']}",
            json={"description": "HR"},
            headers=auth_headers(alice),
        )
        assert resp.json()["description"] == "HR"
        assert (
            await c.delete(f"/v1/knowledge-bases/{kb['id']}", headers=auth_headers(alice))
        ).status_code == 204
        resp = await c.get(f"/v1/knowledge-bases/{kb['id']}", headers=auth_headers(alice))
        assert resp.status_code == 404


async def test_auth_scope_and_validation(db: AsyncConnection) -> None:
    reader = principal(scopes=["rag:read"])
    async with client_for(build_app(), connection=db) as c:
        assert (await c.get("/v1/knowledge-bases")).status_code == 401
        resp = await c.post("/v1/knowledge-bases", json={"name": "x"}, headers=auth_headers(reader))
        assert resp.status_code == 403
        resp = await c.post(
            "/v1/knowledge-bases", json={"name": "", "bogus": 1}, headers=auth_headers(principal())
        )
        assert resp.status_code == 422
        fields = {d["field"] for d in resp.json()["error"]["details"]}
        assert fields == {"body.name", "body.bogus"}
        resp = await c.post(
            "/v1/knowledge-bases", json={"name": "y" * 10_000}, headers=auth_headers(principal())
        )
        assert resp.status_code == 422
        resp = await c.get(f"/v1/knowledge-bases/{uuid.uuid4()}", headers=auth_headers(principal()))
        assert resp.status_code == 404
        resp = await c.get("/v1/knowledge-bases/not-a-uuid", headers=auth_headers(principal()))
        assert resp.status_code == 422


async def test_concurrent_creates_with_one_name_give_one_kb_and_409s(infra: Infra) -> None:
    """Requests that each pass the name check before either commits: the unique constraint
    picks one, and the others get the same 409 a sequential duplicate gets (was a 500)."""
    who = principal()
    app = build_app()
    async with client_for(app) as c:  # real commits: each request in its own transaction
        try:
            for round_ in range(4):
                name = f"race-{round_}"
                results = await asyncio.gather(
                    *(
                        c.post(
                            "/v1/knowledge-bases", json={"name": name}, headers=auth_headers(who)
                        )
                        for _ in range(3)
                    )
                )
                codes = sorted(r.status_code for r in results)
                assert codes == [201, 409, 409], [r.text for r in results]
                assert all(
                    r.json()["error"]["code"] == "name_taken"
                    for r in results
                    if r.status_code == 409
                )
                first = next(r.json() for r in results if r.status_code == 201)
                # renaming another one onto a taken name races the same way
                other = await c.post(
                    "/v1/knowledge-bases", json={"name": f"{name}-b"}, headers=auth_headers(who)
                )
                renames = await asyncio.gather(
                    c.patch(
                        f"/v1/knowledge-bases/{other.json()['id']}",
                        json={"name": f"{name}-c"},
                        headers=auth_headers(who),
                    ),
                    c.patch(
                        f"/v1/knowledge-bases/{first['id']}",
                        json={"name": f"{name}-c"},
                        headers=auth_headers(who),
                    ),
                )
                assert sorted(r.status_code for r in renames) == [200, 409]
        finally:
            listing = await c.get(
                "/v1/knowledge-bases", params={"limit": 100}, headers=auth_headers(who)
            )
            for kb in listing.json()["data"]:
                await c.delete(f"/v1/knowledge-bases/{kb['id']}", headers=auth_headers(who))
