"""HTTP routes of the rag service."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["rag"])
