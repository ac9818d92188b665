"""The billing migrations build exactly the schema the models describe."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from services.billing.models import Base


async def test_models_match_migration(db: AsyncConnection) -> None:
    def diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": True,
                "include_name": lambda name, type_, _p: type_ != "schema" or name == "billing",
                "compare_type": True,
                "version_table_schema": "billing",
            },
        )
        return list(compare_metadata(ctx, Base.metadata))

    assert await db.run_sync(diff) == []
