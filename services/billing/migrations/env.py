"""Alembic environment of the billing service."""

from libs.migrations import run_env
from services.billing.models import Base

run_env(Base.metadata, schema="billing")
