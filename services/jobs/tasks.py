"""Background job functions of the jobs service."""

from __future__ import annotations
