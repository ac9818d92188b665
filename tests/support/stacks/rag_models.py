"""A schema named like one in another upstream but shaped differently (merge renames it)."""

from __future__ import annotations

from pydantic import BaseModel


class Item(BaseModel):
    title: str
    size: int
