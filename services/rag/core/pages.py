"""OpenAI's list envelope and cursor paging over time-ordered ids (:func:`ids.uuid7`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement
from sqlalchemy.orm import InstrumentedAttribute

from libs.errors import BadRequest

Order = Literal["asc", "desc"]


class PageParams(BaseModel):
    """``limit``, ``order``, ``after``, ``before`` as OpenAI's list routes take them."""

    limit: int = Field(default=20, ge=1, le=100)
    order: Order = "desc"
    after: str | None = Field(default=None, max_length=200)
    before: str | None = Field(default=None, max_length=200)


def keyset(
    column: InstrumentedAttribute[uuid.UUID],
    order: Order,
    after: uuid.UUID | None,
    before: uuid.UUID | None,
) -> tuple[list[ColumnElement[bool]], Any]:
    """WHERE clauses and ORDER BY for one page: ``after`` continues past an id in the list's
    order, ``before`` stops at one."""
    where: list[ColumnElement[bool]] = []
    if after is not None:
        where.append(column > after if order == "asc" else column < after)
    if before is not None:
        where.append(column < before if order == "asc" else column > before)
    return where, (column.asc() if order == "asc" else column.desc())


def cursor(prefix: str, value: str | None, param: str) -> uuid.UUID | None:
    """A cursor's key (an id of the listed kind); a malformed one is a 400 naming ``param``."""
    if not value:
        return None
    raw = value[len(prefix) :] if value.startswith(prefix) else ""
    try:
        return uuid.UUID(hex=raw) if len(raw) == 32 else uuid.UUID(hex="x")
    except ValueError:
        raise BadRequest(
            f"Invalid '{param}': expected an id starting with '{prefix}'",
            code="invalid_cursor",
            details=[{"field": param, "message": "not an id of this list"}],
        ) from None


def envelope(
    items: Sequence[Any], limit: int, render: Callable[[Any], dict[str, Any]]
) -> dict[str, Any]:
    """``{"object": "list", "data", "first_id", "last_id", "has_more"}`` from ``limit + 1``
    fetched rows."""
    data = [render(x) for x in items[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }
