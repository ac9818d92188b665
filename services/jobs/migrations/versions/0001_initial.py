"""jobs: job records

Revision ID: jobs_0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "jobs_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("function", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("args", postgresql.JSONB(), nullable=True),
        sa.Column("kwargs", postgresql.JSONB(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("retry_of", sa.String(255), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        schema="jobs",
    )
    op.create_index(
        "ix_jobs_jobs_org_id_created_at", "jobs", ["org_id", "created_at"], schema="jobs"
    )
    op.create_index("ix_jobs_jobs_org_id_status", "jobs", ["org_id", "status"], schema="jobs")


def downgrade() -> None:
    op.drop_index("ix_jobs_jobs_org_id_status", table_name="jobs", schema="jobs")
    op.drop_index("ix_jobs_jobs_org_id_created_at", table_name="jobs", schema="jobs")
    op.drop_table("jobs", schema="jobs")
