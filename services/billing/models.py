"""Database models of the billing service (Postgres schema ``billing``)."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from libs.orm import TYPE_ANNOTATION_MAP, service_metadata

# tables made at run time, not by migrations: the ledger's monthly partitions
# (services/billing/usage/partitions.py)
RUNTIME_TABLES = re.compile(r"^usage_events_\d{4}_\d{2}$")
# "no key" and "no user" in the rollups' primary key (NULL is never equal to NULL there)
NO_ID = uuid.UUID(int=0)
MONEY = Numeric(18, 8)


class Base(DeclarativeBase):
    metadata = service_metadata("billing")
    type_annotation_map = TYPE_ANNOTATION_MAP


class UsageEventRecord(Base):
    """The usage ledger: one row per metered request and kind (see ``libs.usage.UsageEvent``).

    Partitioned by month of ``created_at`` (``billing.usage_events_YYYY_MM``, created ahead by
    the worker and on demand; retention drops whole partitions: usage/partitions.py). Every
    unique key of a partitioned table holds the partition key, so an event's identity, and
    the primary key, is (request_id, kind, created_at): a producer sets ``created_at`` once
    and every retry and replay carries it unchanged. (No surrogate id: one index less to
    maintain per insert.)
    """

    __tablename__ = "usage_events"
    __table_args__ = (
        PrimaryKeyConstraint("request_id", "kind", "created_at"),
        Index("ix_billing_usage_events_org_id_created_at", "org_id", "created_at"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    request_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    org_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    key_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    model: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    ttft_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # the llm service's stored prompt version that served the request (billing_0002)
    prompt_version_id: Mapped[str | None] = mapped_column(String(64), default=None)
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # billing_0003
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    batch: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    storage_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # the catalogue price the cost came from ("openai/gpt-4o@2024-08-06"), or "producer"
    price_ref: Mapped[str | None] = mapped_column(String(160), default=None)


class UsageRollup(Base):
    """Usage summed per organization, UTC day, kind, model, provider, API key and user, kept
    by the consumer in the transaction that inserts the events (only those inserted), so a
    year of an organization's usage is read from a few thousand rows, never the ledger."""

    __tablename__ = "usage_rollups"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "day", "kind", "model", "provider", "key_id", "user_id"),
    )

    org_id: Mapped[uuid.UUID]
    day: Mapped[date] = mapped_column(Date)
    kind: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(64))
    # NO_ID: a user's session (no key) / a key nobody signed in with (no user)
    key_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID]
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    cached: Mapped[int] = mapped_column(BigInteger, default=0)
    cancelled: Mapped[int] = mapped_column(BigInteger, default=0)
    batch: Mapped[int] = mapped_column(BigInteger, default=0)
    # kind storage: the day's sample (the largest, should a day carry several)
    storage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class Subscription(Base):
    """An organization's plan (one row per organization, made the first time billing sees
    it, on the default plan). ``monthly_budget_usd``: an admin's own budget under the plan's."""

    __tablename__ = "subscriptions"

    org_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    plan: Mapped[str] = mapped_column(String(64))
    # active, trialing, past_due, frozen, canceled
    status: Mapped[str] = mapped_column(String(16), default="active")
    current_period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    current_period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    monthly_budget_usd: Mapped[Decimal | None] = mapped_column(MONEY, default=None)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64), default=None)
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # billing_0005: the created time of the last Stripe event applied (older ones are
    # ignored: events arrive out of order), and since when a payment is overdue
    stripe_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    past_due_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class StripeEvent(Base):
    """A Stripe webhook event received (its id: a replay is refused), and once processed."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict[str, object]] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Invoice(Base):
    """A Stripe invoice mirrored from invoice.* webhooks (billing_0006): each event re-reads
    the invoice's current state from Stripe, so the order they arrive in does not matter."""

    __tablename__ = "invoices"
    __table_args__ = (Index("ix_billing_invoices_org_id_created", "org_id", "created", "id"),)

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    org_id: Mapped[uuid.UUID]
    customer: Mapped[str | None] = mapped_column(String(255), default=None)
    subscription: Mapped[str | None] = mapped_column(String(255), default=None)
    number: Mapped[str | None] = mapped_column(String(255), default=None)
    status: Mapped[str | None] = mapped_column(String(32), default=None)
    currency: Mapped[str | None] = mapped_column(String(8), default=None)
    # in the currency's smallest unit (cents), as Stripe gives them
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_due: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_paid: Mapped[int] = mapped_column(BigInteger, default=0)
    period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    hosted_invoice_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    invoice_pdf: Mapped[str | None] = mapped_column(String(2048), default=None)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # the created time of the newest event applied (used when Stripe cannot be asked)
    event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    synced_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class OverageReport(Base):
    """An organization's overage of one billing month (billing_0006): its amount (and its
    tokens) fixed when first computed, then sent to Stripe as an invoice item with an
    idempotency key made of the organization and the month (and as a meter event whose
    identifier is made alike), so a re-run or a crash mid-send never bills twice."""

    __tablename__ = "overage_reports"
    __table_args__ = (PrimaryKeyConstraint("org_id", "period"),)

    org_id: Mapped[uuid.UUID]
    period: Mapped[date] = mapped_column(Date)  # the month's first day
    spend_usd: Mapped[Decimal] = mapped_column(MONEY)
    included_usd: Mapped[Decimal] = mapped_column(MONEY)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(8), default="usd")
    stripe_invoice_item: Mapped[str | None] = mapped_column(String(255), default=None)
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # the month's tokens, sent to the plan's Stripe meter (its identifier: unique at Stripe)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    meter_event: Mapped[str | None] = mapped_column(String(255), default=None)
    meter_reported_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), default=None
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
