"""The emails the auth service sends (plain text), queued after the transaction commits.

The body carries secrets (verification, reset and invite links), and a job's arguments are
visible on the job-events stream, so the body travels encrypted and only the worker reads it.
"""

from __future__ import annotations

from urllib.parse import quote

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from libs.queue import enqueue
from services.auth.core.security import Cipher
from services.auth.settings import AuthSettings

SERVICE = "auth"
SEND_EMAIL = "auth_send_email"


def _link(settings: AuthSettings, path: str, token: str) -> str:
    return f"{settings.public_url.rstrip('/')}{path}?token={quote(token)}"


def verification(settings: AuthSettings, token: str) -> tuple[str, str]:
    link = _link(settings, "/verify-email", token)
    return (
        "Confirm your email address",
        "Welcome to aistack.\n\n"
        f"Confirm your email address by opening this link:\n{link}\n\n"
        f"Or send this token to POST /v1/auth/verify-email:\n{token}\n\n"
        "If you did not sign up, ignore this message.\n",
    )


def account_exists(settings: AuthSettings) -> tuple[str, str]:
    return (
        "Someone tried to sign up with your email",
        "Someone tried to create an aistack account with this email address, which already "
        "has an account.\n\nIf it was you, sign in instead, or reset your password at "
        f"{settings.public_url.rstrip('/')}/forgot-password.\n"
        "If it was not you, ignore this message.\n",
    )


def password_reset(settings: AuthSettings, token: str) -> tuple[str, str]:
    link = _link(settings, "/reset-password", token)
    return (
        "Reset your password",
        f"Reset your aistack password by opening this link (valid for "
        f"{settings.password_reset_ttl // 60} minutes):\n{link}\n\n"
        f"Or send this token to POST /v1/auth/password/reset:\n{token}\n\n"
        "If you did not ask for it, ignore this message; your password is unchanged.\n",
    )


def password_changed(settings: AuthSettings) -> tuple[str, str]:
    return (
        "Your password was changed",
        "The password of your aistack account was just changed and your other sessions "
        "were signed out.\n\nIf this was not you, reset your password now at "
        f"{settings.public_url.rstrip('/')}/forgot-password.\n",
    )


def invite(settings: AuthSettings, org_name: str, role: str, token: str) -> tuple[str, str]:
    link = _link(settings, "/accept-invite", token)
    return (
        f"You are invited to {org_name} on aistack",
        f"You were invited to join the organization {org_name!r} as {role}.\n\n"
        f"Accept by opening this link:\n{link}\n\n"
        f"Or, signed in with this email address, send this token to "
        f"POST /v1/orgs/invites/accept:\n{token}\n",
    )


async def queue_email(
    session: AsyncSession,
    redis: Redis,
    settings: AuthSettings,
    *,
    to: str,
    message: tuple[str, str],
    job_id: str,
) -> None:
    """Send ``message`` (subject, body) to ``to`` once the session commits."""
    subject, body = message
    sealed = Cipher(settings.key_encryption_secret).encrypt(body.encode()).decode()
    await enqueue(
        session,
        redis,
        service=SERVICE,
        function=SEND_EMAIL,
        kwargs={"to": to, "subject": subject, "body_sealed": sealed},
        job_id=job_id,
    )
