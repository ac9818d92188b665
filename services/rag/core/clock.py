"""Time as the API shows it (OpenAI's unix seconds)."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())
