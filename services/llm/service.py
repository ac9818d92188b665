"""Domain logic of the llm service."""

from __future__ import annotations
