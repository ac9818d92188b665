"""Request and response schemas of the auth service."""

from __future__ import annotations
