"""Domain logic of the jobs service."""

from __future__ import annotations
