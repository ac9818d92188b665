"""Request and response schemas of the jobs service."""

from __future__ import annotations
