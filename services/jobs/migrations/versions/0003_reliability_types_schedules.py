"""jobs: dead letters and retries (traceback, run_at, max_tries), workers, parents, priorities,
schedules' runs on job records; job types as workers declare them; schedules

Revision ID: jobs_0003
Revises: jobs_0002
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "jobs_0003"
down_revision: str | None = "jobs_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOB_COLUMNS = (
    sa.Column("traceback", sa.Text(), nullable=True),
    sa.Column("worker", sa.String(200), nullable=True),
    sa.Column("parent_id", sa.String(255), nullable=True),
    sa.Column("priority", sa.String(8), nullable=True),
    sa.Column("run_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("max_tries", sa.Integer(), nullable=True),
    sa.Column("traceparent", sa.String(64), nullable=True),
    sa.Column("schedule_id", sa.Uuid(), nullable=True),
    sa.Column("retried_as", sa.String(255), nullable=True),
)


def upgrade() -> None:
    for column in _JOB_COLUMNS:
        op.add_column("jobs", column, schema="jobs")
    op.create_index(
        "ix_jobs_jobs_active_last_event_at",
        "jobs",
        ["last_event_at"],
        schema="jobs",
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index(
        "ix_jobs_jobs_finished_at",
        "jobs",
        ["finished_at"],
        schema="jobs",
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_jobs_parent_id",
        "jobs",
        ["parent_id"],
        schema="jobs",
        postgresql_where=sa.text("parent_id IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_jobs_schedule_id_created_at",
        "jobs",
        ["schedule_id", "created_at"],
        schema="jobs",
        postgresql_where=sa.text("schedule_id IS NOT NULL"),
    )

    op.create_table(
        "job_types",
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("spec", postgresql.JSONB(), nullable=False),
        sa.Column("user_startable", sa.Boolean(), nullable=False),
        sa.Column("schedulable", sa.Boolean(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("service", "name", name=op.f("pk_job_types")),
        schema="jobs",
    )

    op.create_table(
        "schedules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=True),
        sa.Column("key", sa.String(300), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("function", sa.String(200), nullable=False),
        sa.Column("kwargs", postgresql.JSONB(), nullable=False),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("missed", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(8), nullable=True),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_job_id", sa.String(255), nullable=True),
        sa.Column("runs", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint("key", name="uq_schedules_key"),
        schema="jobs",
    )
    op.create_index(
        "ix_jobs_schedules_org_id_created_at",
        "schedules",
        ["org_id", "created_at"],
        schema="jobs",
    )
    op.create_index(
        "ix_jobs_schedules_due",
        "schedules",
        ["next_run_at"],
        schema="jobs",
        postgresql_where=sa.text("NOT paused"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_schedules_due", table_name="schedules", schema="jobs")
    op.drop_index("ix_jobs_schedules_org_id_created_at", table_name="schedules", schema="jobs")
    op.drop_table("schedules", schema="jobs")
    op.drop_table("job_types", schema="jobs")
    for name in (
        "ix_jobs_jobs_schedule_id_created_at",
        "ix_jobs_jobs_parent_id",
        "ix_jobs_jobs_finished_at",
        "ix_jobs_jobs_active_last_event_at",
    ):
        op.drop_index(name, table_name="jobs", schema="jobs")
    for column in reversed(_JOB_COLUMNS):
        op.drop_column("jobs", column.name, schema="jobs")
