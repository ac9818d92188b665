"""Alembic helpers: each service owns its migrations and its own Postgres schema."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from libs.registry import SERVICES as REGISTRY

REPO_ROOT = Path(__file__).resolve().parent.parent
# every service with a schema of its own, in the registry's order
SERVICES = tuple(s.name for s in REGISTRY.values() if s.database)


def alembic_config(service: str, database_url: str) -> Config:
    """An Alembic config for one service's migrations folder."""
    cfg = Config()
    cfg.set_main_option("script_location", str(REPO_ROOT / "services" / service / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["service"] = service
    return cfg


def upgrade(service: str, database_url: str, revision: str = "head") -> None:
    """Apply a service's migrations up to ``revision``."""
    command.upgrade(alembic_config(service, database_url), revision)


def downgrade(service: str, database_url: str, revision: str = "base") -> None:
    """Revert a service's migrations down to ``revision``."""
    command.downgrade(alembic_config(service, database_url), revision)


def upgrade_all(database_url: str, services: tuple[str, ...] = SERVICES) -> None:
    """Apply every service's migrations."""
    for service in services:
        upgrade(service, database_url)


def run_env(target_metadata: MetaData, schema: str) -> None:
    """Body of every service's ``migrations/env.py`` (online mode, async engine)."""
    url = context.config.get_main_option("sqlalchemy.url")
    assert url

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        if type_ == "schema":
            return name == schema
        return True

    def do_run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table="alembic_version",
            version_table_schema=schema,
            include_schemas=True,
            include_name=include_name,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await conn.commit()
            await conn.run_sync(do_run)
            await conn.commit()
        await engine.dispose()

    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, version_table_schema=schema)
        with context.begin_transaction():
            context.run_migrations()
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(run())
    else:  # called from inside a running loop (tests): run in a worker thread
        import threading

        err: list[BaseException] = []

        def target() -> None:
            try:
                asyncio.run(run())
            except BaseException as exc:
                err.append(exc)

        t = threading.Thread(target=target)
        t.start()
        t.join()
        if err:
            raise err[0]


def main() -> None:
    """CLI: ``python -m libs.migrations [upgrade|downgrade] [service|all] [revision]``."""
    import os
    import sys

    from libs.settings import DEFAULT_DATABASE_URL

    args = sys.argv[1:]
    action = args[0] if args else "upgrade"
    target = args[1] if len(args) > 1 else "all"
    revision = args[2] if len(args) > 2 else ("head" if action == "upgrade" else "-1")
    url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    services = SERVICES if target == "all" else (target,)
    for service in services:
        if action == "upgrade":
            upgrade(service, url, revision)
        elif action == "downgrade":
            downgrade(service, url, revision)
        else:
            raise SystemExit(f"unknown action {action!r}")
        print(f"{service}: {action} {revision} done")


if __name__ == "__main__":
    main()
