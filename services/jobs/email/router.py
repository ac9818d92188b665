"""The one-click unsubscribe of notification mails (public: the signed token is the proof)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from libs.db import SessionDep
from services.jobs.email.schemas import Unsubscribed
from services.jobs.email.service import read_token, unsubscribe_by_token
from services.jobs.state import JobsState

router = APIRouter(prefix="/v1/notifications/unsubscribe", tags=["notification preferences"])

# the token's shape (base64url of "<user id>:<kind>", a dot, a 128-bit HMAC in hex) is
# published; its signature is checked by the service (400 invalid_token)
Token = Annotated[
    str,
    Query(
        min_length=10,
        max_length=400,
        description="From the mail's unsubscribe link: signed, so only the link's own token "
        "is accepted (else 400 invalid_token)",
        json_schema_extra={"pattern": r"^[A-Za-z0-9_-]+\.[0-9a-f]{32}$"},
    ),
]


@router.get(
    "",
    response_class=HTMLResponse,
    summary="The unsubscribe page of a mail's link (a button; opening it changes nothing)",
)
async def unsubscribe_page(token: Token, request: Request) -> HTMLResponse:
    _, kind = read_token(JobsState.of(request).settings.internal_token_secret, token)
    return HTMLResponse(
        '<!doctype html><html><body style="font-family:sans-serif">'
        f"<p>Stop mails of <b>{_escape(kind)}</b>?</p>"
        '<form method="post"><button type="submit">Unsubscribe</button></form>'
        "</body></html>"
    )


@router.post(
    "",
    response_model=Unsubscribed,
    summary="Unsubscribe from a kind's mails (RFC 8058 one-click; no sign-in needed)",
)
async def unsubscribe(token: Token, request: Request, session: SessionDep) -> object:
    secret = JobsState.of(request).settings.internal_token_secret
    return {"unsubscribed": await unsubscribe_by_token(session, secret, token)}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
