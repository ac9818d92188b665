"""Alembic environment of the llm service."""

from libs.migrations import run_env
from services.llm.models import Base

run_env(Base.metadata, schema="llm")
