"""Sign-in with external providers: generic OpenID Connect, WeChat and WeCom (企业微信).

OIDC uses the authorization code flow with PKCE (S256), ``state`` and ``nonce``; the ID token
is verified against the provider's JWKS (from discovery), issuer, audience, expiry and nonce.
WeChat and WeCom are OAuth2 dialects without ID tokens: the code is exchanged at their APIs,
following their documented flows, and the answer names the person.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, urlencode

import httpx
import jwt

from libs.errors import BadGateway, Unauthorized
from services.auth.settings import OIDCProvider, WeChatProvider, WeComProvider

log = logging.getLogger("aistack.auth.oauth")

ID_TOKEN_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
METADATA_TTL_S = 3600
JWKS_MIN_REFETCH_S = 10.0
CLOCK_LEEWAY_S = 60


@dataclass
class ExternalIdentity:
    """Who the provider says signed in."""

    provider: str
    subject: str
    email: str | None = None
    email_verified: bool = False
    name: str = ""


@dataclass
class Pending:
    """What the authorize step remembers (in Redis) for the callback."""

    provider: str
    state: str
    nonce: str
    verifier: str
    redirect_uri: str


def new_pending(provider: str, redirect_uri: str) -> Pending:
    return Pending(
        provider=provider,
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        verifier=secrets.token_urlsafe(48),
        redirect_uri=redirect_uri,
    )


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def provider_failed(what: str) -> BadGateway:
    return BadGateway(f"The identity provider failed ({what})", code="oauth_provider_error")


def rejected(message: str, code: str = "oauth_rejected") -> Unauthorized:
    return Unauthorized(message, code=code)


@dataclass
class _Cached:
    metadata: dict[str, Any] | None = None
    metadata_at: float = 0.0
    jwks: dict[str, Any] = field(default_factory=dict)
    jwks_at: float = 0.0


class OIDCClient:
    """One configured OpenID Provider; discovery and keys are cached per process."""

    def __init__(
        self, name: str, cfg: OIDCProvider, http: httpx.AsyncClient, cache: dict[str, Any]
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.http = http
        self.cache: _Cached = cache.setdefault(f"oidc:{name}:{cfg.issuer}", _Cached())

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            resp = await self.http.get(url, timeout=10.0)
        except httpx.HTTPError as exc:
            raise provider_failed(what) from exc
        if resp.status_code != 200:
            raise provider_failed(f"{what}: HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError as exc:
            raise provider_failed(f"{what}: not JSON") from exc
        if not isinstance(data, dict):
            raise provider_failed(f"{what}: not an object")
        return data

    async def metadata(self) -> dict[str, Any]:
        c = self.cache
        if c.metadata is not None and time.monotonic() - c.metadata_at < METADATA_TTL_S:
            return c.metadata
        url = self.cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
        data = await self._get_json(url, "discovery")
        for required in ("authorization_endpoint", "token_endpoint", "jwks_uri", "issuer"):
            if not isinstance(data.get(required), str):
                raise provider_failed(f"discovery lacks {required}")
        if not self.cfg.issuer_template and data["issuer"] != self.cfg.issuer:
            # OIDC Discovery 4.3: the issuer in the document must be the one configured
            raise provider_failed("discovery names another issuer")
        c.metadata, c.metadata_at = data, time.monotonic()
        return data

    async def authorization_url(self, pending: Pending, login_hint: str | None) -> str:
        meta = await self.metadata()
        params = {
            "response_type": "code",
            "client_id": self.cfg.client_id,
            "redirect_uri": pending.redirect_uri,
            "scope": " ".join(self.cfg.scopes),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": pkce_challenge(pending.verifier),
            "code_challenge_method": "S256",
        }
        if login_hint:
            params["login_hint"] = login_hint
        endpoint = str(meta["authorization_endpoint"])
        sep = "&" if "?" in endpoint else "?"
        return f"{endpoint}{sep}{urlencode(params)}"

    async def _key(self, kid: str | None, alg: str) -> Any:
        c = self.cache
        for attempt in range(2):
            if attempt or not c.jwks:
                if c.jwks and time.monotonic() - c.jwks_at < JWKS_MIN_REFETCH_S:
                    break
                meta = await self.metadata()
                c.jwks = await self._get_json(str(meta["jwks_uri"]), "jwks")
                c.jwks_at = time.monotonic()
            try:
                keys = jwt.PyJWKSet.from_dict(c.jwks).keys
            except jwt.PyJWKSetError:
                keys = []
            for k in keys:
                # the key type must fit ``alg``: jwt.decode checks that
                if (kid is None or k.key_id == kid) and getattr(k, "public_key_use", None) in (
                    None,
                    "sig",
                ):
                    return k.key
        raise rejected("The ID token's signing key is unknown", "invalid_id_token")

    async def exchange(self, code: str, pending: Pending) -> dict[str, Any]:
        meta = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "code_verifier": pending.verifier,
        }
        headers = {"accept": "application/json"}
        if self.cfg.token_auth_method == "client_secret_basic":
            # RFC 6749 2.3.1: both parts form-encoded before Basic
            pair = f"{quote_plus(self.cfg.client_id)}:{quote_plus(self.cfg.client_secret or '')}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.cfg.client_id
            if self.cfg.token_auth_method == "client_secret_post":
                form["client_secret"] = self.cfg.client_secret or ""
        try:
            resp = await self.http.post(
                str(meta["token_endpoint"]),
                data=form,
                headers=headers,
                timeout=10.0,
            )
        except httpx.HTTPError as exc:
            raise provider_failed("token endpoint") from exc
        if resp.status_code in (400, 401):
            # invalid_grant and friends: an old, reused or forged code
            log.info("token endpoint of %s refused the code: %s", self.name, resp.text[:300])
            raise rejected("The identity provider refused the sign-in", "oauth_code_rejected")
        if resp.status_code != 200:
            raise provider_failed(f"token endpoint: HTTP {resp.status_code}")
        data = resp.json()
        if not isinstance(data, dict) or not isinstance(data.get("id_token"), str):
            raise provider_failed("token endpoint returned no id_token")
        return data

    async def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise rejected("Malformed ID token", "invalid_id_token") from exc
        alg = header.get("alg")
        if alg not in ID_TOKEN_ALGORITHMS:
            raise rejected("ID token algorithm not allowed", "invalid_id_token")
        key = await self._key(header.get("kid"), str(alg))
        meta = await self.metadata()
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key,
                algorithms=[str(alg)],
                audience=self.cfg.client_id,
                options={
                    "require": ["iss", "sub", "aud", "exp", "iat"],
                    "verify_iss": False,
                },
                leeway=CLOCK_LEEWAY_S,
            )
        except jwt.PyJWTError as exc:
            raise rejected(f"Invalid ID token: {exc}", "invalid_id_token") from exc
        expected_iss = str(meta["issuer"])
        if self.cfg.issuer_template:
            expected_iss = expected_iss.replace("{tenantid}", str(claims.get("tid", "")))
        if claims.get("iss") != expected_iss:
            raise rejected("ID token from another issuer", "invalid_id_token")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.cfg.client_id:
            raise rejected("ID token issued to another party", "invalid_id_token")
        if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(
            claims["nonce"], nonce
        ):
            raise rejected("ID token nonce does not match", "invalid_id_token")
        return claims

    async def userinfo(self, access_token: str, subject: str) -> dict[str, Any]:
        """Claims from the UserInfo endpoint (providers that keep the ID token small)."""
        meta = await self.metadata()
        endpoint = meta.get("userinfo_endpoint")
        if not isinstance(endpoint, str) or not access_token:
            return {}
        try:
            resp = await self.http.get(
                endpoint, headers={"authorization": f"Bearer {access_token}"}, timeout=10.0
            )
        except httpx.HTTPError as exc:
            raise provider_failed("userinfo") from exc
        if resp.status_code != 200:
            raise provider_failed(f"userinfo: HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            return {}  # a signed (JWT) answer: keep what the ID token said
        # OIDC Core 5.3.2: the UserInfo sub must be the ID token's, or nothing of it is used
        if not isinstance(data, dict) or data.get("sub") != subject:
            raise rejected("UserInfo names another person", "invalid_id_token")
        return data

    async def finish(self, code: str, pending: Pending) -> ExternalIdentity:
        tokens = await self.exchange(code, pending)
        claims = await self.verify_id_token(tokens["id_token"], pending.nonce)
        if "email" not in claims:
            info = await self.userinfo(str(tokens.get("access_token") or ""), str(claims["sub"]))
            for name in ("email", "email_verified", "name"):
                if name in info:
                    claims[name] = info[name]
        email = claims.get("email")
        verified = claims.get("email_verified")
        return ExternalIdentity(
            provider=self.name,
            subject=str(claims["sub"]),
            email=email.strip().lower() if isinstance(email, str) and email.strip() else None,
            # some issuers send "true" as a string
            email_verified=verified is True or verified == "true",
            name=str(claims.get("name") or "")[:200],
        )


async def _tencent_get(
    http: httpx.AsyncClient, api_base: str, path: str, params: dict[str, str], provider: str
) -> dict[str, Any]:
    """GET one of WeChat's or WeCom's JSON APIs (errors come as errcode in an HTTP 200)."""
    try:
        resp = await http.get(api_base.rstrip("/") + path, params=params)
    except httpx.HTTPError as exc:
        raise provider_failed(provider) from exc
    if resp.status_code != 200:
        raise provider_failed(f"{provider}: HTTP {resp.status_code}")
    data = resp.json()
    if not isinstance(data, dict):
        raise provider_failed(f"{provider}: not an object")
    return data


def _wx_error(data: dict[str, Any]) -> str | None:
    code = data.get("errcode")
    if code in (None, 0):
        return None
    return f"{code}: {data.get('errmsg', '')}"


class WeChatClient:
    """WeChat Open Platform website login: qrconnect, then sns/oauth2/access_token."""

    name = "wechat"

    def __init__(self, cfg: WeChatProvider, http: httpx.AsyncClient) -> None:
        self.cfg = cfg
        self.http = http

    def authorization_url(self, pending: Pending) -> str:
        params = {
            "appid": self.cfg.app_id,
            "redirect_uri": pending.redirect_uri,
            "response_type": "code",
            "scope": self.cfg.scope,
            "state": pending.state,
        }
        # WeChat requires the parameters in this order and the #wechat_redirect fragment
        return f"{self.cfg.authorize_url}?{urlencode(params)}#wechat_redirect"

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        return await _tencent_get(self.http, self.cfg.api_base, path, params, self.name)

    async def finish(self, code: str, pending: Pending) -> ExternalIdentity:
        token = await self._get(
            "/sns/oauth2/access_token",
            {
                "appid": self.cfg.app_id,
                "secret": self.cfg.app_secret,
                "code": code,
                "grant_type": "authorization_code",
            },
        )
        err = _wx_error(token)
        if err:
            log.info("wechat refused the code: %s", err)
            raise rejected("WeChat refused the sign-in", "oauth_code_rejected")
        openid = token.get("openid")
        if not isinstance(openid, str) or not openid:
            raise provider_failed("wechat: no openid")
        name = ""
        unionid = token.get("unionid")
        if "snsapi_login" in str(token.get("scope", "")) or "snsapi_userinfo" in str(
            token.get("scope", "")
        ):
            info = await self._get(
                "/sns/userinfo",
                {"access_token": str(token.get("access_token", "")), "openid": openid},
            )
            if not _wx_error(info):
                name = str(info.get("nickname") or "")[:200]
                unionid = unionid or info.get("unionid")
        # the unionid is the same across one developer's apps; the openid is per app
        subject = f"union:{unionid}" if unionid else f"open:{self.cfg.app_id}:{openid}"
        return ExternalIdentity(provider=self.name, subject=subject, name=name)


class WeComClient:
    """WeCom web login: wwlogin/sso/login, then cgi-bin/gettoken and cgi-bin/auth/getuserinfo."""

    name = "wecom"

    def __init__(self, cfg: WeComProvider, http: httpx.AsyncClient, cache: dict[str, Any]) -> None:
        self.cfg = cfg
        self.http = http
        self.cache = cache

    def authorization_url(self, pending: Pending) -> str:
        params = {
            "login_type": "CorpApp",
            "appid": self.cfg.corp_id,
            "agentid": self.cfg.agent_id,
            "redirect_uri": pending.redirect_uri,
            "state": pending.state,
        }
        return f"{self.cfg.authorize_url}?{urlencode(params)}"

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        return await _tencent_get(self.http, self.cfg.api_base, path, params, self.name)

    async def _access_token(self, fresh: bool = False) -> str:
        # the corp access token lives 7200 s and its issuance is rate limited: cache it
        key = f"wecom:{self.cfg.corp_id}:{self.cfg.agent_id}"
        cached = self.cache.get(key)
        if cached and not fresh and cached[1] > time.monotonic():
            return str(cached[0])
        data = await self._get(
            "/cgi-bin/gettoken", {"corpid": self.cfg.corp_id, "corpsecret": self.cfg.secret}
        )
        err = _wx_error(data)
        if err or not isinstance(data.get("access_token"), str):
            raise provider_failed(f"wecom gettoken {err}")
        ttl = int(data.get("expires_in") or 7200)
        self.cache[key] = (data["access_token"], time.monotonic() + max(60, ttl - 300))
        return str(data["access_token"])

    async def finish(self, code: str, pending: Pending) -> ExternalIdentity:
        for fresh in (False, True):
            token = await self._access_token(fresh)
            info = await self._get(
                "/cgi-bin/auth/getuserinfo", {"access_token": token, "code": code}
            )
            # 40014/42001: the cached access token is invalid or expired; get a new one once
            if info.get("errcode") in (40014, 42001) and not fresh:
                continue
            break
        err = _wx_error(info)
        if err:
            log.info("wecom refused the code: %s", err)
            raise rejected("WeCom refused the sign-in", "oauth_code_rejected")
        userid = info.get("userid") or info.get("UserId")
        if isinstance(userid, str) and userid:
            return ExternalIdentity(
                provider=self.name, subject=f"{self.cfg.corp_id}:{userid}", name=userid[:200]
            )
        # people outside the corporation only get an openid; they are not its members
        raise rejected("Only members of the organization can sign in with WeCom", "oauth_rejected")
