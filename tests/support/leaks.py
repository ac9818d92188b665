"""Find the tests that leave committed rows or Redis keys behind (opt-in: TEST_LEAKS=<file>).

Each test's leftovers are what another test's global count, scheduler round or worker burst
would pick up. With ``TEST_LEAKS=/tmp/leaks.txt``, every test's before/after difference in
rows per table (a separate connection: committed data only) and in Redis keys is appended to
that file, one line per test that left something::

    TEST_LEAKS=/tmp/leaks.txt uv run pytest tests/jobs && cat /tmp/leaks.txt
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

ENV = "TEST_LEAKS"
ID = re.compile(r"[0-9a-f][0-9a-f-]{7,}|\d+")
SKIP_SCHEMAS = ("pg_catalog", "information_schema", "public", "pg_toast")


def leaks_file() -> Path | None:
    where = os.environ.get(ENV)
    return Path(where) if where else None


async def snapshot(engine: AsyncEngine, redis_url: str) -> dict[str, int]:
    """Rows in every service table, and the number of Redis keys."""
    async with engine.connect() as conn:
        tables = (
            await conn.execute(
                text(
                    "SELECT schemaname, tablename FROM pg_tables "
                    "WHERE NOT (schemaname = ANY(:skip)) AND tablename <> 'alembic_version' "
                    "ORDER BY 1, 2"
                ),
                {"skip": list(SKIP_SCHEMAS)},
            )
        ).all()
        counts: dict[str, int] = {}
        if tables:
            union = " UNION ALL ".join(
                f'SELECT \'{s}.{t}\', count(*) FROM "{s}"."{t}"' for s, t in tables
            )
            counts = {name: int(n) for name, n in (await conn.execute(text(union))).all()}
    client = Redis.from_url(redis_url)
    try:
        # Redis keys by shape (ids made '*'): which kind of key was left, not only how many
        async for key in client.scan_iter(count=1000):
            shape = "redis:" + ID.sub("*", key.decode(errors="replace"))
            counts[shape] = counts.get(shape, 0) + 1
    finally:
        await client.aclose()
    return counts


def record(where: Path, nodeid: str, before: dict[str, int], after: dict[str, int]) -> None:
    # what grew only: a test's Redis fixture flushes what earlier tests left, which is no leak
    grown = {k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)}
    if grown:
        diff = " ".join(f"{k}{n:+d}" for k, n in sorted(grown.items()))
        with where.open("a") as f:
            f.write(f"{nodeid}: {diff}\n")
