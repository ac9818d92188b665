"""Request and response schemas of the billing service."""

from __future__ import annotations
