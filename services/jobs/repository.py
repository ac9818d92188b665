"""Data access of the jobs service."""

from __future__ import annotations
