"""Data access of the auth service."""

from __future__ import annotations
