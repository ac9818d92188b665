"""Alembic environment of the jobs service."""

from libs.migrations import run_env
from services.jobs.models import Base

run_env(Base.metadata, schema="jobs")
