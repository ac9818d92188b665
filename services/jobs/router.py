"""HTTP routes of the jobs service."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["jobs"])
