from __future__ import annotations

import time
import uuid

import jwt
import pytest

from libs.errors import Unauthorized
from libs.identity import Principal, sign_internal_token, verify_internal_token

SECRET = "s" * 40


def test_round_trip() -> None:
    p = Principal(user_id=uuid.uuid4(), org_id=uuid.uuid4(), roles=["admin"], scopes=["llm:use"])
    assert verify_internal_token(sign_internal_token(p, SECRET), SECRET) == p


def test_wrong_secret_expired_and_tampered_are_refused() -> None:
    p = Principal(org_id=uuid.uuid4(), scopes=["admin"])
    with pytest.raises(Unauthorized):
        verify_internal_token(sign_internal_token(p, SECRET), "t" * 40)
    with pytest.raises(Unauthorized) as exc:
        verify_internal_token(sign_internal_token(p, SECRET, ttl_seconds=-60), SECRET)
    assert exc.value.code == "internal_token_expired"
    token = sign_internal_token(p, SECRET)
    header, _payload, sig = token.split(".")
    forged = jwt.encode(
        {"p": {"scopes": ["admin"]}, "exp": time.time() + 60}, "x", algorithm="HS256"
    )
    with pytest.raises(Unauthorized):
        verify_internal_token(".".join([header, forged.split(".")[1], sig]), SECRET)
    none_token = jwt.encode({"p": {}}, None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(Unauthorized):
        verify_internal_token(none_token, SECRET)


def test_scopes() -> None:
    p = Principal(scopes=["rag:read"])
    assert p.has_scope("rag:read") and not p.has_scope("rag:write")
    assert Principal(scopes=["admin"]).has_scope("rag:write")
