"""auth: users, organizations, memberships, sessions, tokens, keys, audit, invites, flags

Revision ID: auth_0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "auth_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "auth"
TZ = sa.DateTime(timezone=True)


def _created() -> sa.Column:
    return sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False)


def _updated() -> sa.Column:
    return sa.Column("updated_at", TZ, server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("email_verified_at", TZ, nullable=True),
        sa.Column("is_platform_admin", sa.Boolean(), nullable=False),
        sa.Column("personal_org_id", sa.Uuid(), nullable=True),
        sa.Column("totp_secret_enc", sa.LargeBinary(), nullable=True),
        sa.Column("totp_enabled_at", TZ, nullable=True),
        sa.Column("totp_last_step", sa.Integer(), nullable=True),
        sa.Column("recovery_code_hashes", postgresql.JSONB(), nullable=False),
        sa.Column("password_changed_at", TZ, nullable=True),
        _created(),
        _updated(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        schema=S,
    )
    op.create_table(
        "organizations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("personal", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _created(),
        _updated(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        schema=S,
    )
    op.create_table(
        "memberships",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        _created(),
        _updated(),
        sa.ForeignKeyConstraint(
            ["org_id"],
            [f"{S}.organizations.id"],
            ondelete="CASCADE",
            name=op.f("fk_memberships_org_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            [f"{S}.users.id"],
            ondelete="CASCADE",
            name=op.f("fk_memberships_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memberships")),
        sa.UniqueConstraint("org_id", "user_id", name=op.f("uq_memberships_org_id_user_id")),
        schema=S,
    )
    op.create_index(op.f("ix_auth_memberships_user_id"), "memberships", ["user_id"], schema=S)
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("user_agent", sa.String(512), nullable=False),
        sa.Column("ip", sa.String(64), nullable=True),
        _created(),
        sa.Column("last_seen_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.Column("revoked_reason", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            [f"{S}.users.id"],
            ondelete="CASCADE",
            name=op.f("fk_sessions_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        schema=S,
    )
    op.create_index(op.f("ix_auth_sessions_user_id"), "sessions", ["user_id"], schema=S)
    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("family_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        _created(),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("rotated_at", TZ, nullable=True),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["family_id"],
            [f"{S}.sessions.id"],
            ondelete="CASCADE",
            name=op.f("fk_refresh_tokens_family_id_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refresh_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_refresh_tokens_token_hash")),
        schema=S,
    )
    op.create_index(
        op.f("ix_auth_refresh_tokens_family_id"), "refresh_tokens", ["family_id"], schema=S
    )
    op.create_table(
        "signing_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("private_key_enc", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _created(),
        sa.Column("retiring_at", TZ, nullable=True),
        sa.Column("retire_after", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signing_keys")),
        sa.UniqueConstraint("kid", name=op.f("uq_signing_keys_kid")),
        schema=S,
    )
    op.create_index(op.f("ix_auth_signing_keys_status"), "signing_keys", ["status"], schema=S)
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("scopes", postgresql.JSONB(), nullable=False),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("rpm_limit", sa.Integer(), nullable=True),
        sa.Column("tpm_limit", sa.Integer(), nullable=True),
        sa.Column("last_used_at", TZ, nullable=True),
        sa.Column("revoked_at", TZ, nullable=True),
        _created(),
        _updated(),
        sa.ForeignKeyConstraint(
            ["org_id"],
            [f"{S}.organizations.id"],
            ondelete="CASCADE",
            name=op.f("fk_api_keys_org_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        schema=S,
    )
    op.create_index(op.f("ix_auth_api_keys_org_id"), "api_keys", ["org_id"], schema=S)
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=True),
        sa.Column("actor_user_id", sa.Uuid(), nullable=True),
        sa.Column("actor_key_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(32), nullable=True),
        sa.Column("target_id", sa.String(320), nullable=True),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(512), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("details", postgresql.JSONB(), nullable=False),
        _created(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        schema=S,
    )
    op.create_index(
        "ix_audit_events_org_id_created_at", "audit_events", ["org_id", "created_at"], schema=S
    )
    op.create_index(
        op.f("ix_auth_audit_events_actor_user_id"), "audit_events", ["actor_user_id"], schema=S
    )
    op.create_table(
        "invites",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("invited_by", sa.Uuid(), nullable=True),
        _created(),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("accepted_at", TZ, nullable=True),
        sa.Column("accepted_by", sa.Uuid(), nullable=True),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            [f"{S}.organizations.id"],
            ondelete="CASCADE",
            name=op.f("fk_invites_org_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invites")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_invites_token_hash")),
        schema=S,
    )
    op.create_index(op.f("ix_auth_invites_org_id"), "invites", ["org_id"], schema=S)
    op.create_table(
        "one_time_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        _created(),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("used_at", TZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            [f"{S}.users.id"],
            ondelete="CASCADE",
            name=op.f("fk_one_time_tokens_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_one_time_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_one_time_tokens_token_hash")),
        schema=S,
    )
    op.create_index(
        op.f("ix_auth_one_time_tokens_user_id"), "one_time_tokens", ["user_id"], schema=S
    )
    op.create_table(
        "feature_flags",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("rollout_percentage", sa.Integer(), nullable=False),
        sa.Column("org_overrides", postgresql.JSONB(), nullable=False),
        _created(),
        _updated(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature_flags")),
        sa.UniqueConstraint("key", name=op.f("uq_feature_flags_key")),
        schema=S,
    )


def downgrade() -> None:
    for table in (
        "feature_flags",
        "one_time_tokens",
        "invites",
        "audit_events",
        "api_keys",
        "signing_keys",
        "refresh_tokens",
        "sessions",
        "memberships",
        "organizations",
        "users",
    ):
        op.drop_table(table, schema=S)
