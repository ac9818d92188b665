"""Data access of the rag service."""

from __future__ import annotations
