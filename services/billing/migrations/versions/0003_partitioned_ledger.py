"""billing: the ledger partitioned by month, with daily rollups

The ledger becomes a table partitioned by month of created_at; its primary key is the
event's identity (request_id, kind, created_at: every unique key of a partitioned table must
hold the partition key) and the surrogate id goes; rows move over, and the rollups are built
from them. New columns: cached_tokens, batch,
storage_bytes, price_ref.

Revision ID: billing_0003
Revises: billing_0002
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "billing_0003"
down_revision: str | None = "billing_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COMMON = (
    "request_id, kind, org_id, user_id, key_id, model, provider, prompt_tokens, "
    "completion_tokens, cost_usd, latency_ms, ttft_ms, cached, status, created_at, "
    "prompt_version_id, recorded_at"
)

# a partition for every month the rows fall in, this month and the next two (the worker keeps
# creating them ahead: services/billing/usage/partitions.py names them the same way)
_PARTITIONS = """
DO $$
DECLARE m timestamptz;
BEGIN
  FOR m IN
    SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
      FROM billing.usage_events_old
    UNION
    SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => k))
           AT TIME ZONE 'UTC'
      FROM generate_series(0, 2) AS k
  LOOP
    EXECUTE format(
      'CREATE TABLE IF NOT EXISTS billing.%I PARTITION OF billing.usage_events '
      'FOR VALUES FROM (%L) TO (%L)',
      'usage_events_' || to_char(m AT TIME ZONE 'UTC', 'YYYY_MM'),
      m, m + interval '1 month');
  END LOOP;
END $$;
"""


def upgrade() -> None:
    op.execute("ALTER TABLE billing.usage_events RENAME TO usage_events_old")
    op.execute(
        "ALTER TABLE billing.usage_events_old RENAME CONSTRAINT pk_usage_events "
        "TO pk_usage_events_old"
    )
    op.execute(
        "ALTER TABLE billing.usage_events_old RENAME CONSTRAINT uq_usage_events_request_id_kind "
        "TO uq_usage_events_old_request_id_kind"
    )
    op.execute(
        "ALTER INDEX billing.ix_billing_usage_events_org_id_created_at "
        "RENAME TO ix_billing_usage_events_old_org_id_created_at"
    )
    op.create_table(
        "usage_events",
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("key_id", sa.Uuid(), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(18, 8), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prompt_version_id", sa.String(64), nullable=True),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("cached_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("batch", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("storage_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("price_ref", sa.String(160), nullable=True),
        sa.PrimaryKeyConstraint("request_id", "kind", "created_at", name=op.f("pk_usage_events")),
        schema="billing",
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index(
        "ix_billing_usage_events_org_id_created_at",
        "usage_events",
        ["org_id", "created_at"],
        schema="billing",
    )
    op.execute(_PARTITIONS)
    op.execute(
        f"INSERT INTO billing.usage_events ({_COMMON}, price_ref) "  # noqa: S608
        f"SELECT {_COMMON}, 'producer' FROM billing.usage_events_old"
    )
    op.drop_table("usage_events_old", schema="billing")

    op.create_table(
        "usage_rollups",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in ("requests", "prompt_tokens", "completion_tokens", "cached_tokens")
        ),
        sa.Column("cost_usd", sa.Numeric(18, 8), nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in ("errors", "cached", "cancelled", "batch", "storage_bytes")
        ),
        sa.PrimaryKeyConstraint(
            "org_id",
            "day",
            "kind",
            "model",
            "provider",
            "key_id",
            "user_id",
            name=op.f("pk_usage_rollups"),
        ),
        schema="billing",
    )
    op.execute(
        """
        INSERT INTO billing.usage_rollups
        SELECT org_id, (created_at AT TIME ZONE 'UTC')::date, kind, model, provider,
               coalesce(key_id, '00000000-0000-0000-0000-000000000000'),
               coalesce(user_id, '00000000-0000-0000-0000-000000000000'),
               count(*), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),
               sum(cost_usd), count(*) FILTER (WHERE status = 'error'),
               count(*) FILTER (WHERE cached), count(*) FILTER (WHERE status = 'cancelled'),
               count(*) FILTER (WHERE batch), coalesce(max(storage_bytes), 0)
          FROM billing.usage_events
         GROUP BY 1, 2, 3, 4, 5, 6, 7
        """
    )


def downgrade() -> None:
    op.drop_table("usage_rollups", schema="billing")
    op.execute("ALTER TABLE billing.usage_events RENAME TO usage_events_new")
    op.execute(
        "ALTER TABLE billing.usage_events_new RENAME CONSTRAINT pk_usage_events "
        "TO pk_usage_events_new"
    )
    op.execute(
        "ALTER INDEX billing.ix_billing_usage_events_org_id_created_at "
        "RENAME TO ix_billing_usage_events_new_org_id_created_at"
    )
    op.create_table(
        "usage_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("key_id", sa.Uuid(), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Numeric(18, 8), nullable=False, server_default="0"),
        sa.Column("latency_ms", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("cached", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("prompt_version_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_events")),
        sa.UniqueConstraint("request_id", "kind", name=op.f("uq_usage_events_request_id_kind")),
        schema="billing",
    )
    op.create_index(
        "ix_billing_usage_events_org_id_created_at",
        "usage_events",
        ["org_id", "created_at"],
        schema="billing",
    )
    # one row per (request_id, kind) again: the first recorded, should one have repeated
    op.execute(
        f"INSERT INTO billing.usage_events (id, {_COMMON}) "  # noqa: S608
        f"SELECT DISTINCT ON (request_id, kind) gen_random_uuid(), {_COMMON} "
        "FROM billing.usage_events_new "
        "ORDER BY request_id, kind, recorded_at"
    )
    op.drop_table("usage_events_new", schema="billing")
