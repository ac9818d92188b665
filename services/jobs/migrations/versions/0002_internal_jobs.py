"""jobs: internal jobs (platform bookkeeping such as usage records) flagged, out of users' lists

Revision ID: jobs_0002
Revises: jobs_0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "jobs_0002"
down_revision: str | None = "jobs_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("internal", sa.Boolean(), nullable=False, server_default=sa.false()),
        schema="jobs",
    )
    # recorded before producers flagged them: billing's usage records, one per metered call
    op.execute(
        "UPDATE jobs.jobs SET internal = true "
        "WHERE service = 'billing' AND function = 'record_usage'"
    )
    # users' lists read only the visible rows, however many usage records an org has
    op.create_index(
        "ix_jobs_jobs_visible_org_id_created_at",
        "jobs",
        ["org_id", "created_at"],
        schema="jobs",
        postgresql_where=sa.text("NOT internal"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_jobs_visible_org_id_created_at", table_name="jobs", schema="jobs")
    op.drop_column("jobs", "internal", schema="jobs")
