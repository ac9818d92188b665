"""llm: prompt store (prompts, immutable versions, labels, history, uses) and conversations

Revision ID: llm_0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "llm_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "llm"


def _created() -> "sa.Column[datetime]":
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def _updated() -> "sa.Column[datetime]":
    return sa.Column(
        "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "prompts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("latest_version", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_by_user", sa.Uuid(), nullable=True),
        sa.Column("created_by_key", sa.Uuid(), nullable=True),
        _created(),
        _updated(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts")),
        sa.UniqueConstraint("org_id", "name", name=op.f("uq_prompts_org_id_name")),
        schema=S,
    )
    op.create_index(op.f("ix_llm_prompts_org_id"), "prompts", ["org_id"], schema=S)

    op.create_table(
        "prompt_versions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("prompt_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("messages", postgresql.JSONB(), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("params", postgresql.JSONB(), nullable=False),
        sa.Column("variables", postgresql.JSONB(), nullable=True),
        sa.Column("commit_message", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_by_user", sa.Uuid(), nullable=True),
        sa.Column("created_by_key", sa.Uuid(), nullable=True),
        _created(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_versions")),
        sa.UniqueConstraint(
            "prompt_id", "number", name=op.f("uq_prompt_versions_prompt_id_number")
        ),
        sa.ForeignKeyConstraint(
            ["prompt_id"],
            [f"{S}.prompts.id"],
            name=op.f("fk_prompt_versions_prompt_id_prompts"),
            ondelete="CASCADE",
        ),
        schema=S,
    )
    op.create_index(
        op.f("ix_llm_prompt_versions_prompt_id"), "prompt_versions", ["prompt_id"], schema=S
    )
    # versions are immutable: the database itself refuses to change one
    op.execute(
        f"""
        CREATE FUNCTION {S}.prompt_versions_immutable() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'prompt versions are immutable' USING ERRCODE = 'restrict_violation';
        END;
        $$;
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER prompt_versions_immutable BEFORE UPDATE ON {S}.prompt_versions
        FOR EACH ROW EXECUTE FUNCTION {S}.prompt_versions_immutable();
        """
    )

    op.create_table(
        "prompt_labels",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("prompt_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("targets", postgresql.JSONB(), nullable=False),
        _created(),
        _updated(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_labels")),
        sa.UniqueConstraint("prompt_id", "name", name=op.f("uq_prompt_labels_prompt_id_name")),
        sa.ForeignKeyConstraint(
            ["prompt_id"],
            [f"{S}.prompts.id"],
            name=op.f("fk_prompt_labels_prompt_id_prompts"),
            ondelete="CASCADE",
        ),
        schema=S,
    )
    op.create_index(
        op.f("ix_llm_prompt_labels_prompt_id"), "prompt_labels", ["prompt_id"], schema=S
    )

    op.create_table(
        "prompt_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("prompt_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("version_id", sa.Uuid(), nullable=True),
        sa.Column("before", postgresql.JSONB(), nullable=True),
        sa.Column("after", postgresql.JSONB(), nullable=True),
        sa.Column("actor_user", sa.Uuid(), nullable=True),
        sa.Column("actor_key", sa.Uuid(), nullable=True),
        _created(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_events")),
        sa.ForeignKeyConstraint(
            ["prompt_id"],
            [f"{S}.prompts.id"],
            name=op.f("fk_prompt_events_prompt_id_prompts"),
            ondelete="CASCADE",
        ),
        schema=S,
    )
    op.create_index(
        "ix_llm_prompt_events_prompt_seq",
        "prompt_events",
        ["prompt_id", "seq"],
        schema=S,
    )

    op.create_table(
        "prompt_uses",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("prompt_id", sa.Uuid(), nullable=False),
        sa.Column("version_id", sa.Uuid(), nullable=False),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("key_id", sa.Uuid(), nullable=True),
        _created(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_uses")),
        sa.ForeignKeyConstraint(
            ["prompt_id"],
            [f"{S}.prompts.id"],
            name=op.f("fk_prompt_uses_prompt_id_prompts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            [f"{S}.prompt_versions.id"],
            name=op.f("fk_prompt_uses_version_id_prompt_versions"),
            ondelete="CASCADE",
        ),
        schema=S,
    )
    op.create_index(op.f("ix_llm_prompt_uses_org_id"), "prompt_uses", ["org_id"], schema=S)
    op.create_index(op.f("ix_llm_prompt_uses_request_id"), "prompt_uses", ["request_id"], schema=S)
    op.create_index(
        "ix_llm_prompt_uses_version_created",
        "prompt_uses",
        ["version_id", "created_at"],
        schema=S,
    )

    op.create_table(
        "conversations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("key_id", sa.Uuid(), nullable=True),
        sa.Column("title", sa.String(500), nullable=False, server_default=""),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("metadata", postgresql.JSONB(), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False, server_default="0"),
        _created(),
        _updated(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
        schema=S,
    )
    op.create_index(
        "ix_llm_conversations_org_user",
        "conversations",
        ["org_id", "user_id", "created_at"],
        schema=S,
    )
    op.create_index(
        "ix_llm_conversations_org_key",
        "conversations",
        ["org_id", "key_id", "created_at"],
        schema=S,
    )

    op.create_table(
        "conversation_messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("prompt_version_id", sa.Uuid(), nullable=True),
        sa.Column("usage", postgresql.JSONB(), nullable=True),
        _created(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversation_messages")),
        sa.UniqueConstraint(
            "conversation_id", "seq", name=op.f("uq_conversation_messages_conversation_id_seq")
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            [f"{S}.conversations.id"],
            name=op.f("fk_conversation_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("conversation_messages", schema=S)
    op.drop_table("conversations", schema=S)
    op.drop_table("prompt_uses", schema=S)
    op.drop_table("prompt_events", schema=S)
    op.drop_table("prompt_labels", schema=S)
    op.drop_table("prompt_versions", schema=S)
    op.execute(f"DROP FUNCTION IF EXISTS {S}.prompt_versions_immutable()")
    op.drop_table("prompts", schema=S)
