"""Background work of the auth service: outgoing email over SMTP, nightly cleanup, and the
replay of session revocations Redis missed (services/auth/sessions/revocations.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import ssl
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from arq import cron
from sqlalchemy import delete, select, update

from libs import notify
from libs.db import session_scope
from libs.queue import JobContext, job
from services.auth.core.mail import SEND_EMAIL
from services.auth.core.security import Cipher
from services.auth.models import ApiKey, AuthSession, Invite, OneTimeToken, RefreshToken, SigningKey
from services.auth.sessions.revocations import replay_forever
from services.auth.settings import AuthSettings, get_settings
from services.auth.tokens.keys import RETIRED, RETIRING

log = logging.getLogger("aistack.auth.tasks")

# ended sessions and spent tokens are kept this long (for the user's and admins' view)
KEEP_ENDED_DAYS = 30


def _settings(ctx: JobContext) -> AuthSettings:
    s = ctx.state.get("settings")
    return s if isinstance(s, AuthSettings) else get_settings()


def _send(settings: AuthSettings, msg: EmailMessage) -> None:
    with smtplib.SMTP(
        settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout
    ) as smtp:
        if settings.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password or "")
        smtp.send_message(msg)


@job(name=SEND_EMAIL, max_tries=5, timeout=60)
async def send_email(ctx: JobContext, *, to: str, subject: str, body_sealed: str) -> dict[str, str]:
    """Send one plain-text email. The Message-ID derives from the job id, so a retry after an
    unclear failure is recognisable as the same message."""
    settings = _settings(ctx)
    body = Cipher(settings.key_encryption_secret).decrypt(body_sealed.encode()).decode()
    msg = EmailMessage()
    msg["From"] = settings.smtp_from
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(idstring=ctx.job_id, domain="aistack.local")
    msg.set_content(body)
    await asyncio.to_thread(_send, settings, msg)
    log.info("sent %r to %s", subject, to)
    return {"to": to}


async def cleanup_expired(session_factory: Any, now: datetime | None = None) -> dict[str, int]:
    """Delete what can never be used again; keep recent history for a while. Idempotent."""
    now = now or datetime.now(UTC)
    horizon = now - timedelta(days=KEEP_ENDED_DAYS)
    counts: dict[str, int] = {}
    async with session_scope(session_factory) as session:
        for name, stmt in (
            ("refresh_tokens", delete(RefreshToken).where(RefreshToken.expires_at < horizon)),
            ("one_time_tokens", delete(OneTimeToken).where(OneTimeToken.expires_at < horizon)),
            ("invites", delete(Invite).where(Invite.expires_at < horizon)),
            (
                "sessions",
                delete(AuthSession).where(
                    AuthSession.revoked_at.is_not(None), AuthSession.revoked_at < horizon
                ),
            ),
            (
                "signing_keys_retired",
                update(SigningKey)
                .where(SigningKey.status == RETIRING, SigningKey.retire_after <= now)
                .values(status=RETIRED),
            ),
        ):
            result = await session.execute(stmt)
            counts[name] = int(getattr(result, "rowcount", 0) or 0)
    return counts


@job(name="auth_cleanup", max_tries=3, timeout=300, retry_outages=True)
async def cleanup(ctx: JobContext) -> dict[str, int]:
    counts = await cleanup_expired(ctx.state["db"])
    log.info("cleanup: %s", counts)
    return counts


async def notify_expiring_keys(
    session_factory: Any, redis: Any, now: datetime | None = None, days: int = 7
) -> int:
    """Emit ``api_key.expiring`` for every live API key expiring within ``days`` (to whoever
    created it; the organization's admins when they are gone); once per key and expiry (the
    event id derives from both), however often this runs. How many were emitted."""
    now = now or datetime.now(UTC)
    async with session_factory() as session:
        stmt = select(ApiKey).where(
            ApiKey.revoked_at.is_(None),
            ApiKey.expires_at.is_not(None),
            ApiKey.expires_at > now,
            ApiKey.expires_at <= now + timedelta(days=days),
        )
        keys = list((await session.scalars(stmt)).all())
    events = [
        notify.make_event(
            "api_key.expiring",
            notify.ApiKeyExpiring(
                api_key_id=k.id, name=k.name, prefix=k.prefix, expires_at=k.expires_at
            ),
            org_id=k.org_id,
            user_id=k.user_id,
            subject={"api_key_id": k.id},
            key=f"{k.id}:{k.expires_at.isoformat() if k.expires_at else ''}",
            source="auth",
        )
        for k in keys
    ]
    await notify.emit_now(redis, events)
    return len(events)


@job(name="auth_notify_expiring_keys", max_tries=3, timeout=300, retry_outages=True)
async def expiring_keys(ctx: JobContext) -> dict[str, int]:
    """Tell API keys' owners that their key expires within 7 days."""
    return {"notified": await notify_expiring_keys(ctx.state["db"], ctx.redis)}


async def on_startup(ctx: dict[str, Any]) -> None:
    ctx["revocation_replay_task"] = asyncio.create_task(replay_forever(ctx["db"], ctx["redis"]))


async def on_shutdown(ctx: dict[str, Any]) -> None:
    task: asyncio.Task[None] | None = ctx.get("revocation_replay_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


functions = [send_email, cleanup, expiring_keys]
cron_jobs = [
    cron(
        cleanup.coroutine,
        name="auth_cleanup_nightly",
        hour={3},
        minute={17},
        unique=True,
        run_at_startup=False,
        timeout=300,
    ),
    cron(
        expiring_keys.coroutine,
        name="auth_notify_expiring_keys_daily",
        hour={9},
        minute={7},
        unique=True,
        run_at_startup=False,
        timeout=300,
    ),
]
