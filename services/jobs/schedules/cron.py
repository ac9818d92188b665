"""Cron expressions with a time zone (cronsim does the arithmetic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class InvalidCron(ValueError):
    """A cron expression or time zone that cannot be used (says which and why)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def normalize(expr: str) -> str:
    """The five-field form of ``expr`` (aliases such as ``@daily`` expanded)."""
    text = " ".join(expr.split())
    return ALIASES.get(text.lower(), text)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidCron("timezone", f"Unknown time zone {name!r}") from exc


def check(expr: str, timezone: str) -> str:
    """Validate; the normalized expression."""
    tz = zone(timezone)
    cron = normalize(expr)
    if len(cron.split()) != 5:
        raise InvalidCron(
            "cron", "A cron expression has five fields: minute hour day month weekday"
        )
    try:
        next(CronSim(cron, datetime.now(tz)))
    except (CronSimError, StopIteration) as exc:
        raise InvalidCron("cron", f"Invalid cron expression {expr!r}: {exc}") from exc
    return cron


def next_after(expr: str, timezone: str, after: datetime, count: int = 1) -> list[datetime]:
    """The next ``count`` ticks strictly after ``after`` (UTC)."""
    it = CronSim(normalize(expr), after.astimezone(zone(timezone)))
    out = []
    for _ in range(count):
        try:
            out.append(next(it).astimezone(UTC))
        except StopIteration:
            break
    return out


def last_at_or_before(expr: str, timezone: str, at: datetime) -> datetime | None:
    """The latest tick at or before ``at`` (UTC)."""
    it = CronSim(normalize(expr), (at + timedelta(seconds=1)).astimezone(zone(timezone)), True)
    try:
        return next(it).astimezone(UTC)
    except StopIteration:
        return None
