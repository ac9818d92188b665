"""WeChat and WeCom (企业微信) sign-in against fakes that speak their documented wire format
(JSON over HTTP 200, errors as errcode/errmsg)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import Response

from libs.testing import client_for
from services.auth.app import build_app
from services.auth.settings import WeChatProvider, WeComProvider
from tests.support.servers import serve
from tests.support.stacks.auth import account_from, auth_settings

BASE = "http://test"


def _json(data: dict[str, object]) -> Response:
    import json

    # WeChat answers JSON with a text/plain content type
    return Response(json.dumps(data, ensure_ascii=False), media_type="text/plain")


@dataclass
class FakeTencent:
    app_id: str = "wx0123456789abcdef"
    app_secret: str = "wechat-secret"
    corp_id: str = "ww0123456789abcdef"
    corp_secret: str = "wecom-secret"
    # code -> (openid, unionid, nickname) / (userid or None for outsiders)
    wechat_codes: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    wecom_codes: dict[str, str | None] = field(default_factory=dict)
    corp_tokens: list[str] = field(default_factory=list)
    expired_tokens: set[str] = field(default_factory=set)

    def app(self) -> FastAPI:
        app = FastAPI()
        access: dict[str, tuple[str, str, str]] = {}

        @app.get("/sns/oauth2/access_token")
        async def wechat_token(appid: str, secret: str, code: str, grant_type: str) -> Response:
            if appid != self.app_id or secret != self.app_secret:
                return _json({"errcode": 40125, "errmsg": "invalid appsecret"})
            if grant_type != "authorization_code" or code not in self.wechat_codes:
                return _json({"errcode": 40029, "errmsg": "invalid code"})
            person = self.wechat_codes.pop(code)  # codes are single use
            token = secrets.token_hex(8)
            access[token] = person
            return _json(
                {
                    "access_token": token,
                    "expires_in": 7200,
                    "refresh_token": secrets.token_hex(8),
                    "openid": person[0],
                    "scope": "snsapi_login",
                    "unionid": person[1],
                }
            )

        @app.get("/sns/userinfo")
        async def wechat_userinfo(access_token: str, openid: str) -> Response:
            person = access.get(access_token)
            if person is None or person[0] != openid:
                return _json({"errcode": 40003, "errmsg": "invalid openid"})
            return _json(
                {
                    "openid": openid,
                    "nickname": person[2],
                    "sex": 1,
                    "province": "Guangdong",
                    "city": "Shenzhen",
                    "country": "CN",
                    "headimgurl": "https://thirdwx.qlogo.cn/x/0",
                    "privilege": [],
                    "unionid": person[1],
                }
            )

        @app.get("/cgi-bin/gettoken")
        async def wecom_token(corpid: str, corpsecret: str) -> Response:
            if corpid != self.corp_id or corpsecret != self.corp_secret:
                return _json({"errcode": 40001, "errmsg": "invalid credential"})
            token = secrets.token_hex(8)
            self.corp_tokens.append(token)
            return _json({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200})

        @app.get("/cgi-bin/auth/getuserinfo")
        async def wecom_userinfo(access_token: str, code: str) -> Response:
            if access_token in self.expired_tokens:
                return _json({"errcode": 42001, "errmsg": "access_token expired"})
            if access_token not in self.corp_tokens:
                return _json({"errcode": 40014, "errmsg": "invalid access_token"})
            if code not in self.wecom_codes:
                return _json({"errcode": 40029, "errmsg": "invalid code"})
            userid = self.wecom_codes.pop(code)
            if userid is None:
                return _json(
                    {"errcode": 0, "errmsg": "ok", "openid": "oOUTSIDER", "external_userid": "e1"}
                )
            return _json({"errcode": 0, "errmsg": "ok", "userid": userid})

        return app


@pytest.fixture
async def tencent() -> AsyncIterator[tuple[FakeTencent, str]]:
    fake = FakeTencent()
    running = await serve(fake.app())
    yield fake, running.url
    await running.stop()


@pytest.fixture
async def cn(
    tencent: tuple[FakeTencent, str], db: AsyncConnection, redis: Redis
) -> AsyncIterator[httpx.AsyncClient]:
    fake, url = tencent
    settings = auth_settings(
        public_url=BASE,
        wechat=WeChatProvider(
            app_id=fake.app_id,
            app_secret=fake.app_secret,
            authorize_url=f"{url}/connect/qrconnect",
            api_base=url,
        ),
        wecom=WeComProvider(
            corp_id=fake.corp_id,
            agent_id="1000002",
            secret=fake.corp_secret,
            authorize_url=f"{url}/wwlogin/sso/login",
            api_base=url,
        ),
    )
    async with client_for(build_app(settings), connection=db, base_url=BASE) as c:
        yield c


async def _start(cn: httpx.AsyncClient, provider: str) -> tuple[str, dict[str, list[str]]]:
    resp = await cn.get(f"/v1/auth/oauth/{provider}/authorize")
    assert resp.status_code == 302, resp.text
    parts = urlsplit(resp.headers["location"])
    return resp.headers["location"], parse_qs(parts.query)


async def test_wechat_sign_in(cn: httpx.AsyncClient, tencent: tuple[FakeTencent, str]) -> None:
    fake, _ = tencent
    location, q = await _start(cn, "wechat")
    assert location.endswith("#wechat_redirect")
    assert q["appid"] == [fake.app_id] and q["response_type"] == ["code"]
    assert q["scope"] == ["snsapi_login"]
    assert q["redirect_uri"] == [f"{BASE}/v1/auth/oauth/wechat/callback"]
    fake.wechat_codes["c1"] = ("oOPENID1", "uUNION1", "小明")
    resp = await cn.get(
        "/v1/auth/oauth/wechat/callback", params={"code": "c1", "state": q["state"][0]}
    )
    assert resp.status_code == 200, resp.text
    acct = await account_from(cn, "", "", resp.json())
    me = (await cn.get("/v1/auth/me", headers=acct.headers)).json()
    assert me["user"]["email"] is None and me["user"]["display_name"] == "小明"

    # the same person again (another openid under the same unionid): the same account
    _, q = await _start(cn, "wechat")
    fake.wechat_codes["c2"] = ("oOPENID2", "uUNION1", "小明")
    again = await cn.get(
        "/v1/auth/oauth/wechat/callback", params={"code": "c2", "state": q["state"][0]}
    )
    assert (await account_from(cn, "", "", again.json())).user_id == acct.user_id

    _, q = await _start(cn, "wechat")
    bad = await cn.get(
        "/v1/auth/oauth/wechat/callback", params={"code": "used-or-fake", "state": q["state"][0]}
    )
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "oauth_code_rejected"


async def test_wecom_sign_in(cn: httpx.AsyncClient, tencent: tuple[FakeTencent, str]) -> None:
    fake, _ = tencent
    _, q = await _start(cn, "wecom")
    assert q["login_type"] == ["CorpApp"] and q["appid"] == [fake.corp_id]
    assert q["agentid"] == ["1000002"]
    fake.wecom_codes["w1"] = "zhangsan"
    resp = await cn.get(
        "/v1/auth/oauth/wecom/callback", params={"code": "w1", "state": q["state"][0]}
    )
    assert resp.status_code == 200, resp.text
    first = await account_from(cn, "", "", resp.json())

    # the corp access token is cached; when it expires it is fetched again once
    fake.expired_tokens.add(fake.corp_tokens[-1])
    _, q = await _start(cn, "wecom")
    fake.wecom_codes["w2"] = "zhangsan"
    again = await cn.get(
        "/v1/auth/oauth/wecom/callback", params={"code": "w2", "state": q["state"][0]}
    )
    assert again.status_code == 200, again.text
    assert (await account_from(cn, "", "", again.json())).user_id == first.user_id
    assert len(fake.corp_tokens) == 2

    # people outside the corporation are refused
    _, q = await _start(cn, "wecom")
    fake.wecom_codes["w3"] = None
    outsider = await cn.get(
        "/v1/auth/oauth/wecom/callback", params={"code": "w3", "state": q["state"][0]}
    )
    assert outsider.status_code == 401
