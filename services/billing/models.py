"""Database models of the billing service (Postgres schema ``billing``)."""

from __future__ import annotations

from libs.db import make_base

Base = make_base("billing")
