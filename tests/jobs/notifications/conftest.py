"""auth and jobs in-process, the fan-out asking auth over HTTP (as the worker does); a real
SMTP server (aiosmtpd) for mails."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from libs.settings import DEV_INTERNAL_SECRET
from libs.testing import client_for
from services.auth.app import build_app as build_auth
from services.jobs.app import build_app
from services.jobs.notifications.fanout import Fanout, Recipients
from services.jobs.settings import JobsSettings
from tests.support.stacks.auth import auth_settings


@dataclass
class Stack:
    auth: httpx.AsyncClient
    jobs: httpx.AsyncClient
    fanout: Fanout


@pytest.fixture
async def stack(
    db: AsyncConnection, redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Stack]:
    async with (
        client_for(build_auth(auth_settings()), connection=db) as auth,
        client_for(build_app(), connection=db) as jobs,
    ):
        recipients = Recipients(auth, str(auth.base_url), DEV_INTERNAL_SECRET)
        # auth in-process shares the test's one connection: one recipients question at a time
        yield Stack(auth, jobs, Fanout(sessions, redis, recipients, ask_concurrency=1))


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, JobsSettings]]:
    inbox = Inbox()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, JobsSettings(smtp_host="127.0.0.1", smtp_port=port)
    controller.stop()
