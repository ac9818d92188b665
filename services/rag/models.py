"""Database models of the rag service (Postgres schema ``rag``)."""

from __future__ import annotations

from libs.db import make_base

Base = make_base("rag")
