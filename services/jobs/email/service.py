"""Notification mails: one per event (the ``send_notification_email`` job, retried) or a
digest (hourly or daily, as each user chose), over SMTP; every mail carries a one-click
unsubscribe link for its kind (RFC 8058: ``List-Unsubscribe`` + ``List-Unsubscribe-Post``)
with a signed token, so it works without signing in. Security notices carry none (they cannot
be switched off)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import smtplib
import ssl
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import SessionFactory, session_scope
from libs.errors import BadRequest
from libs.notify import KINDS
from services.jobs.email.templates import Rendered, render, render_digest
from services.jobs.notifications.models import NotificationEvent, NotificationMail
from services.jobs.preferences.repository import PreferenceRepository
from services.jobs.preferences.service import DEFAULT_DIGEST, DIGEST_KIND, unsubscribe
from services.jobs.settings import JobsSettings

log = logging.getLogger("aistack.jobs.email")
UNSUBSCRIBE_PATH = "/v1/notifications/unsubscribe"
# the job that sends one mail now
SEND_MAIL = "send_notification_email"


def _key(secret: str) -> bytes:
    return hashlib.sha256(b"aistack-unsubscribe\x00" + secret.encode()).digest()


def unsubscribe_token(secret: str, user_id: uuid.UUID, kind: str) -> str:
    payload = f"{user_id}:{kind}".encode()
    sig = hmac.new(_key(secret), payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + sig.hex()


def read_token(secret: str, token: str) -> tuple[uuid.UUID, str]:
    """The user and kind a token unsubscribes; 400 when it is not one of ours."""
    try:
        raw, sig = token.split(".", 1)
        payload = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        expected = hmac.new(_key(secret), payload, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(expected.hex(), sig):
            raise ValueError("signature")
        user, kind = payload.decode().split(":", 1)
        return uuid.UUID(user), kind
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("Invalid or altered unsubscribe link", code="invalid_token") from exc


async def unsubscribe_by_token(session: AsyncSession, secret: str, token: str) -> str:
    user_id, kind = read_token(secret, token)
    await unsubscribe(session, user_id, kind)
    return kind


def unsubscribe_url(settings: JobsSettings, user_id: uuid.UUID, kind: str) -> str | None:
    if kind != DIGEST_KIND and KINDS[kind].mandatory:
        return None
    token = unsubscribe_token(settings.internal_token_secret, user_id, kind)
    return f"{settings.public_url.rstrip('/')}{UNSUBSCRIBE_PATH}?token={quote(token)}"


def _send(settings: JobsSettings, msg: EmailMessage) -> None:
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout) as s:
        if settings.smtp_starttls:
            s.starttls(context=ssl.create_default_context())
        if settings.smtp_user:
            s.login(settings.smtp_user, settings.smtp_password or "")
        s.send_message(msg)


async def send(
    settings: JobsSettings, to: str, mail: Rendered, unsubscribe: str | None, msg_key: str
) -> None:
    # no folding of a long List-Unsubscribe URL into encoded words (RFC 5322 allows 998)
    msg = EmailMessage(policy=SMTP_POLICY.clone(max_line_length=998))
    msg["From"] = settings.smtp_from
    msg["To"] = to
    msg["Subject"] = mail.subject
    # one id per mail: a retry after an unclear failure is recognisably the same message
    msg["Message-ID"] = make_msgid(idstring=msg_key, domain="aistack.local")
    if unsubscribe:
        msg["List-Unsubscribe"] = f"<{unsubscribe}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(mail.text)
    msg.add_alternative(mail.html, subtype="html")
    await asyncio.to_thread(_send, settings, msg)


def _context(m: NotificationMail, ev: NotificationEvent) -> dict[str, Any]:
    return {
        "data": ev.data,
        "subject_ids": ev.subject,
        "org": m.org_name,
        "name": m.name,
    }


async def send_one(sessions: SessionFactory, settings: JobsSettings, mail_id: uuid.UUID) -> str:
    """Send one pending mail now; its status afterwards. Raises when SMTP fails (retried)."""
    async with session_scope(sessions) as session:
        m = await session.get(NotificationMail, mail_id)
        ev = await session.get(NotificationEvent, m.event_id) if m else None
        if m is None or ev is None or m.status != "pending" or m.mode != "now":
            return "skipped"
        prefs = await PreferenceRepository(session).settings(m.user_id)
        language = prefs.language if prefs else "en"
        link = unsubscribe_url(settings, m.user_id, m.kind)
        ctx = _context(m, ev)
        mail = render(m.kind, language, subject_ids=ctx.pop("subject_ids"), unsubscribe=link, **ctx)
        await send(settings, m.email, mail, link, f"notify-{m.id}")
        m.status, m.sent_at = "sent", datetime.now(UTC)
    log.info("sent %s mail to %s", m.kind, m.email)
    return "sent"


async def send_digests(sessions: SessionFactory, settings: JobsSettings, frequency: str) -> int:
    """One mail per user whose digest comes at ``frequency`` with what is pending for them;
    how many mails went. Raises at the end if any could not be sent (they stay pending)."""
    async with sessions() as session:
        stmt = select(NotificationMail.user_id).where(
            NotificationMail.status == "pending", NotificationMail.mode == "digest"
        )
        users = sorted(set((await session.scalars(stmt)).all()))
        chosen = await PreferenceRepository(session).settings_of(users)
    due = [u for u in users if (chosen[u].digest if u in chosen else DEFAULT_DIGEST) == frequency]
    sent, failed = 0, 0
    for user_id in due:
        try:
            sent += await _digest_of(sessions, settings, user_id)
        except (OSError, smtplib.SMTPException) as exc:
            failed += 1
            log.warning("digest of %s not sent: %s", user_id, exc)
    if failed:
        raise RuntimeError(f"{failed} digests not sent (kept for the next run)")
    return sent


async def _digest_of(sessions: SessionFactory, settings: JobsSettings, user_id: uuid.UUID) -> int:
    async with session_scope(sessions) as session:
        stmt = (
            select(NotificationMail, NotificationEvent)
            .join(NotificationEvent, NotificationEvent.id == NotificationMail.event_id)
            .where(
                NotificationMail.user_id == user_id,
                NotificationMail.status == "pending",
                NotificationMail.mode == "digest",
            )
            .order_by(NotificationMail.created_at)
            .with_for_update(of=NotificationMail, skip_locked=True)
        )
        rows = (await session.execute(stmt)).all()
        if not rows:
            return 0
        prefs = await PreferenceRepository(session).settings(user_id)
        language = prefs.language if prefs else "en"
        items: list[tuple[str, dict[str, Any]]] = []
        by_kind: dict[str, int] = defaultdict(int)
        for m, ev in rows:
            ctx = _context(m, ev)
            items.append((m.kind, {**ctx, "subject": ctx.pop("subject_ids"), "kind": m.kind}))
            by_kind[m.kind] += 1
        link = unsubscribe_url(settings, user_id, DIGEST_KIND)
        mail = render_digest(language, items, link)
        first = rows[0][0]
        await send(settings, first.email, mail, link, f"digest-{first.id}")
        now = datetime.now(UTC)
        for m, _ in rows:
            m.status, m.sent_at = "sent", now
    return 1
