"""Request and response schemas of the llm service."""

from __future__ import annotations
