"""Every service's migrations upgrade, downgrade to nothing, and upgrade again, cleanly, and
build exactly the schema its models describe."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from libs import migrations
from libs.testing import Infra


async def _tables(url: str, schema: str) -> set[str]:
    eng = create_async_engine(url)
    async with eng.connect() as conn:
        rows = await conn.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": schema},
        )
        names = {r[0] for r in rows}
    await eng.dispose()
    return names


@pytest.fixture
async def scratch_db(infra: Infra) -> str:  # type: ignore[misc]
    base = make_url(infra.database_url)
    name = f"migr_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    yield url
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.mark.parametrize("service", migrations.SERVICES)
async def test_upgrade_downgrade_upgrade(service: str, scratch_db: str) -> None:
    await asyncio.to_thread(migrations.upgrade, service, scratch_db)
    tables = await _tables(scratch_db, service)
    assert "alembic_version" in tables
    await asyncio.to_thread(migrations.downgrade, service, scratch_db, "base")
    assert await _tables(scratch_db, service) == {"alembic_version"}
    await asyncio.to_thread(migrations.upgrade, service, scratch_db)
    assert await _tables(scratch_db, service) == tables


@pytest.mark.parametrize("service", migrations.SERVICES)
async def test_models_match_migrations(service: str, db: AsyncConnection) -> None:
    """The migrations build exactly the schema the service's models describe."""
    models = importlib.import_module(f"services.{service}.models")
    metadata = models.Base.metadata
    # tables a service makes at run time (billing's monthly ledger partitions)
    runtime = getattr(models, "RUNTIME_TABLES", None)

    def include(name: str | None, type_: str, parents: Any) -> bool:
        if type_ == "schema":
            return name == service
        table = name if type_ == "table" else parents.get("table_name")
        return runtime is None or not runtime.match(table or "")

    def diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": True,
                "include_name": include,
                "compare_type": True,
                "version_table_schema": service,
            },
        )
        return list(compare_metadata(ctx, metadata))

    assert await db.run_sync(diff) == []
