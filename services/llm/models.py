"""Database models of the llm service (Postgres schema ``llm``)."""

from __future__ import annotations

from libs.db import make_base

Base = make_base("llm")
