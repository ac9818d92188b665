from __future__ import annotations

import httpx

from tests.auth.helpers import signup


async def test_register_login_me(client: httpx.AsyncClient) -> None:
    acct = await signup(client)
    assert acct.tokens["token_type"] == "Bearer" and acct.tokens["expires_in"] == 900
    assert acct.claims["roles"] == ["owner"]
    me = await client.get("/v1/auth/me", headers=acct.headers)
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["user"]["email"] == acct.email
    assert body["org"]["id"] == str(acct.org_id) and body["org"]["personal"] is True
    assert body["session_id"] == str(acct.session_id)
