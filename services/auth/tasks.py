"""Background job functions of the auth service: outgoing email over SMTP."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid

from libs.queue import JobContext, job
from services.auth.mail import SEND_EMAIL
from services.auth.security import Cipher
from services.auth.settings import AuthSettings, get_settings

log = logging.getLogger("aistack.auth.tasks")

# sending needs no database
uses_database = False


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


functions = [send_email]
