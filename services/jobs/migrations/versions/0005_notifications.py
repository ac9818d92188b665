"""jobs: the notification center (events received, users' notifications), webhook endpoints,
messages and attempts; preferences, users' mail settings, mails owed

Revision ID: jobs_0005
Revises: jobs_0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "jobs_0005"
down_revision: str | None = "jobs_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notification_events",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("subject", postgresql.JSONB(), nullable=False),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("recipients", sa.Integer(), server_default="0", nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema="jobs",
    )
    op.create_index(
        "ix_jobs_notification_events_org_id_received_at",
        "notification_events",
        ["org_id", "received_at"],
        schema="jobs",
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=True),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("subject", postgresql.JSONB(), nullable=False),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("seq", name="uq_notifications_seq"),
        sa.UniqueConstraint("event_id", "user_id", name="uq_notifications_event_id_user_id"),
        schema="jobs",
    )
    op.create_index(
        "ix_jobs_notifications_user_id_seq", "notifications", ["user_id", "seq"], schema="jobs"
    )
    op.create_index(
        "ix_jobs_notifications_unread",
        "notifications",
        ["user_id", "org_id"],
        schema="jobs",
        postgresql_where=sa.text("read_at IS NULL AND archived_at IS NULL"),
    )

    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("kinds", postgresql.JSONB(), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("previous_secret", sa.String(128), nullable=True),
        sa.Column("previous_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema="jobs",
    )
    op.create_index(
        "ix_jobs_webhook_endpoints_org_id", "webhook_endpoints", ["org_id"], schema="jobs"
    )
    op.create_table(
        "webhook_messages",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.UniqueConstraint(
            "endpoint_id", "event_id", name="uq_webhook_messages_endpoint_id_event_id"
        ),
        schema="jobs",
    )
    op.create_index(
        "ix_jobs_webhook_messages_endpoint_id_created_at",
        "webhook_messages",
        ["endpoint_id", "created_at"],
        schema="jobs",
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("response", sa.String(2000), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema="jobs",
    )
    op.create_index(
        "ix_jobs_webhook_attempts_message_id",
        "webhook_attempts",
        ["message_id", "attempt"],
        schema="jobs",
    )

    op.create_table(
        "notification_preferences",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("org_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("channels", postgresql.JSONB(), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema="jobs",
    )
    op.create_index(
        "uq_jobs_notification_preferences_user",
        "notification_preferences",
        ["user_id", "kind"],
        unique=True,
        schema="jobs",
        postgresql_where=sa.text("org_id IS NULL"),
    )
    op.create_index(
        "uq_jobs_notification_preferences_org",
        "notification_preferences",
        ["org_id", "kind"],
        unique=True,
        schema="jobs",
        postgresql_where=sa.text("user_id IS NULL"),
    )
    op.create_table(
        "notification_settings",
        sa.Column("user_id", sa.Uuid(), primary_key=True),
        sa.Column("digest", sa.String(8), nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema="jobs",
    )
    op.create_table(
        "notification_mails",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=True),
        sa.Column("org_name", sa.String(200), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("event_id", "user_id", name="uq_notification_mails_event_id_user_id"),
        schema="jobs",
    )
    op.create_index(
        "ix_jobs_notification_mails_pending_digest",
        "notification_mails",
        ["user_id"],
        schema="jobs",
        postgresql_where=sa.text("status = 'pending' AND mode = 'digest'"),
    )


def downgrade() -> None:
    op.drop_table("notification_mails", schema="jobs")
    op.drop_table("notification_settings", schema="jobs")
    op.drop_table("notification_preferences", schema="jobs")
    op.drop_table("webhook_attempts", schema="jobs")
    op.drop_table("webhook_messages", schema="jobs")
    op.drop_table("webhook_endpoints", schema="jobs")
    op.drop_table("notifications", schema="jobs")
    op.drop_table("notification_events", schema="jobs")
