from __future__ import annotations

import time

import httpx
import pyotp

from tests.support.stacks.auth import PASSWORD, Account, login, signup


def _code(secret: str, offset_steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(int(time.time()) + 30 * offset_steps)


async def _enable(client: httpx.AsyncClient, acct: Account) -> tuple[str, list[str]]:
    enroll = await client.post("/v1/auth/totp/enroll", headers=acct.headers)
    assert enroll.status_code == 200, enroll.text
    secret = enroll.json()["secret"]
    assert enroll.json()["otpauth_uri"].startswith("otpauth://totp/")
    wrong = await client.post("/v1/auth/totp/verify", json={"code": "000000"}, headers=acct.headers)
    if _code(secret) != "000000":
        assert wrong.status_code == 400
    ok = await client.post(
        "/v1/auth/totp/verify", json={"code": _code(secret, -1)}, headers=acct.headers
    )
    assert ok.status_code == 200, ok.text
    codes = ok.json()["recovery_codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    return secret, codes


async def test_totp_login_requires_a_second_factor(client: httpx.AsyncClient) -> None:
    acct = await signup(client)
    secret, codes = await _enable(client, acct)
    me = (await client.get("/v1/auth/me", headers=acct.headers)).json()
    assert me["user"]["totp_enabled"] is True
    again = await client.post("/v1/auth/totp/enroll", headers=acct.headers)
    assert again.status_code == 409

    missing = await client.post("/v1/auth/login", json={"email": acct.email, "password": PASSWORD})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "totp_required"
    bad = await client.post(
        "/v1/auth/login",
        json={"email": acct.email, "password": PASSWORD, "totp_code": "12345x"},
    )
    assert bad.status_code == 401
    # a wrong password with a good code still fails the same way as any bad password
    wrong_pw = await client.post(
        "/v1/auth/login",
        json={"email": acct.email, "password": "nope-nope-nope", "totp_code": _code(secret)},
    )
    assert wrong_pw.status_code == 401
    assert wrong_pw.json()["error"]["code"] == "invalid_credentials"

    code = _code(secret)
    await login(client, acct.email, totp_code=code)
    # the same code cannot be replayed
    replay = await client.post(
        "/v1/auth/login",
        json={"email": acct.email, "password": PASSWORD, "totp_code": code},
    )
    assert replay.status_code == 401

    # recovery codes work once each, in any case and with or without the dash
    await login(client, acct.email, recovery_code=codes[0].upper().replace("-", ""))
    used = await client.post(
        "/v1/auth/login",
        json={"email": acct.email, "password": PASSWORD, "recovery_code": codes[0]},
    )
    assert used.status_code == 401

    # disabling needs the password and a code
    no_pw = await client.post(
        "/v1/auth/totp/disable",
        json={"password": "wrong-wrong-1", "code": codes[1]},
        headers=acct.headers,
    )
    assert no_pw.status_code == 400
    off = await client.post(
        "/v1/auth/totp/disable", json={"password": PASSWORD, "code": codes[1]}, headers=acct.headers
    )
    assert off.status_code == 204, off.text
    await login(client, acct.email)
