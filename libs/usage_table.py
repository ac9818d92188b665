"""The usage outbox table, declared by each service that emits usage, in its own schema.

A service's ``models.py`` mixes :class:`UsageOutboxTable` into its declarative ``Base``::

    class UsageOutboxRow(UsageOutboxTable, Base):
        \"\"\"Usage events Redis could not take, until they are sent to billing.\"\"\"

and its migration creates ``<schema>.usage_outbox`` (llm: ``0002_usage_outbox``). The rows are
written and replayed by :class:`libs.usage.UsageOutbox` with plain SQL, so that a request path
that emits usage never loads this module (nor SQLAlchemy).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Index, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from libs.usage import OUTBOX_TABLE


class UsageOutboxTable:
    """``<schema>.usage_outbox``: a usage event Redis could not take (an outage), kept until it
    is sent to billing's stream. ``job_id`` is the event's key (``usage:<kind>:<request_id>``)
    and ``job`` its message (:class:`libs.usage.UsageMessage`); the names are those of the
    time events were queue jobs, kept so a deployed table needs no migration."""

    __tablename__ = OUTBOX_TABLE

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        schema = cls.metadata.schema  # type: ignore[attr-defined]
        return (Index(f"ix_{schema}_{OUTBOX_TABLE}_created_at", "created_at"),)

    job_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    job: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
