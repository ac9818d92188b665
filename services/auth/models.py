"""Database models of the auth service (Postgres schema ``auth``)."""

from __future__ import annotations

from libs.db import make_base

Base = make_base("auth")
