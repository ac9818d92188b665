"""HTTP routes of the llm service."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["llm"])
