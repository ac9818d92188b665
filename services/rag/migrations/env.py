"""Alembic environment of the rag service."""

from libs.migrations import run_env
from services.rag.models import Base

run_env(Base.metadata, schema="rag")
