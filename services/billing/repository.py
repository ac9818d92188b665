"""Data access of the billing service."""

from __future__ import annotations
