"""Emails leave through a real SMTP server (aiosmtpd, in-process) via the arq job."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.testing import Infra
from services.auth import tasks
from services.auth.core.mail import SERVICE
from tests.support.stacks.auth import PASSWORD, auth_settings, new_email, token_in
from tests.support.workers import run_burst


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, Message]] = []

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append((envelope, message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


async def test_verification_and_reset_mails_arrive(
    client: httpx.AsyncClient, redis: Redis, infra: Infra, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    email = new_email()
    reg = await client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert reg.status_code == 202
    forgot = await client.post("/v1/auth/password/forgot", json={"email": email})
    assert forgot.status_code == 202

    settings = auth_settings(smtp_host="127.0.0.1", smtp_port=port)
    worker = await run_burst(infra.redis_url, SERVICE, tasks.functions, ctx={"settings": settings})
    assert worker.jobs_complete == 2 and worker.jobs_failed == 0
    for _ in range(50):
        if len(inbox.messages) == 2:
            break
        await asyncio.sleep(0.05)
    by_subject = {m["Subject"]: (env, m) for env, m in inbox.messages}
    assert set(by_subject) == {"Confirm your email address", "Reset your password"}
    env, msg = by_subject["Confirm your email address"]
    assert env.rcpt_tos == [email] and msg["To"] == email
    assert msg["From"] == settings.smtp_from and msg["Message-ID"]
    body = msg.get_payload(decode=True)
    assert isinstance(body, bytes)
    token = token_in(body.decode(), "/verify-email")
    verified = await client.post("/v1/auth/verify-email", json={"token": token})
    assert verified.status_code == 204

    _, reset = by_subject["Reset your password"]
    reset_body = reset.get_payload(decode=True)
    assert isinstance(reset_body, bytes)
    reset_token = token_in(reset_body.decode(), "/reset-password")
    done = await client.post(
        "/v1/auth/password/reset", json={"token": reset_token, "new_password": "Mailed-pass-11"}
    )
    assert done.status_code == 204


async def test_mail_job_secrets_do_not_travel_in_clear(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    email = new_email()
    await client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    # the job-events stream carries job arguments: the link must not be readable there
    events = await redis.xrange("aistack:job-events")
    raw = b" ".join(v for _, fields in events for v in fields.values())
    assert email.encode() in raw
    assert b"verify-email?token=" not in raw and b"body_sealed" in raw


async def test_cleanup_deletes_only_what_is_dead(
    client: httpx.AsyncClient, db: AsyncConnection
) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import func, select, update
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from services.auth.models import AuthSession, RefreshToken
    from tests.support.stacks.auth import signup

    old, live = await signup(client), await signup(client)
    assert (await client.post("/v1/auth/logout", headers=old.headers)).status_code == 204
    long_ago = datetime.now(UTC) - timedelta(days=90)
    await db.execute(
        update(AuthSession).where(AuthSession.id == old.session_id).values(revoked_at=long_ago)
    )
    await db.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == old.session_id)
        .values(expires_at=long_ago)
    )
    factory = async_sessionmaker(
        bind=db, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    counts = await tasks.cleanup_expired(factory)
    assert counts["sessions"] == 1 and counts["refresh_tokens"] == 1
    remaining = (
        await db.execute(
            select(func.count())
            .select_from(AuthSession)
            .where(AuthSession.id.in_([old.session_id, live.session_id]))
        )
    ).scalar_one()
    assert remaining == 1
    assert (await client.get("/v1/auth/me", headers=live.headers)).status_code == 200
    assert (await tasks.cleanup_expired(factory))["sessions"] == 0
