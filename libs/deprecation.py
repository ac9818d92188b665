"""Deprecating a route of ``/v1``: its OpenAPI operation says so, and every answer it gives
(errors included) carries the ``Deprecation`` (RFC 9745), ``Sunset`` (RFC 8594) and, with a
link, ``Link: <...>; rel="deprecation"`` headers.

    @router.get("/v1/things/{id}/old-view", **deprecated(since=date(2027, 1, 1),
                                                         sunset=date(2027, 7, 1)))
    async def old_view(...): ...

A dependency of the route puts the headers in the request's state and the observability
middleware (libs/telemetry.py) adds them to the answer. The policy (how long before removal,
what must be announced) is docs/api-stability.md; a sunset sooner than :data:`MIN_NOTICE`
after the deprecation is refused at import. Not for a route an app serves as its hot route
(:meth:`libs.app.App.set_hot_route`), which runs no dependencies.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any

from fastapi import Depends, Request

from libs.telemetry import DEPRECATION_STATE

# the least time between announcing a deprecation and removing the route (docs/api-stability.md)
MIN_NOTICE = datetime.timedelta(days=180)


def _midnight_utc(day: datetime.date) -> datetime.datetime:
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Deprecation:
    """When a route was deprecated, when it goes, and where that is explained."""

    since: datetime.date
    sunset: datetime.date
    # where the change is explained (the CHANGELOG entry, a migration note): a Link header
    link: str | None = None

    def __post_init__(self) -> None:
        if self.sunset - self.since < MIN_NOTICE:
            raise ValueError(
                f"sunset {self.sunset} is less than {MIN_NOTICE.days} days after the "
                f"deprecation ({self.since}): see docs/api-stability.md"
            )

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The answer headers: ``Deprecation: @<epoch>``, ``Sunset: <HTTP-date>``, ``Link``."""
        since = int(_midnight_utc(self.since).timestamp())
        sunset = format_datetime(_midnight_utc(self.sunset), usegmt=True)
        headers = [(b"deprecation", f"@{since}".encode()), (b"sunset", sunset.encode())]
        if self.link:
            headers.append((b"link", f'<{self.link}>; rel="deprecation"'.encode()))
        return headers


def deprecated(
    *, since: datetime.date, sunset: datetime.date, link: str | None = None
) -> dict[str, Any]:
    """Route decorator arguments marking a route deprecated from ``since``, removed after
    ``sunset`` (merge them by hand with the route's own ``dependencies``/``openapi_extra``)."""
    info = Deprecation(since, sunset, link)
    headers = info.headers()

    async def mark(request: Request) -> None:
        setattr(request.state, DEPRECATION_STATE, headers)

    return {
        "deprecated": True,
        "dependencies": [Depends(mark)],
        "openapi_extra": {"x-sunset": sunset.isoformat()},
    }
