"""Alembic environment of the auth service."""

from libs.migrations import run_env
from services.auth.models import Base

run_env(Base.metadata, schema="auth")
