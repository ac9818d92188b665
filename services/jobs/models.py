"""Database models of the jobs service (Postgres schema ``jobs``)."""

from __future__ import annotations

from libs.db import make_base

Base = make_base("jobs")
