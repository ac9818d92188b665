"""Request and response schemas of the rag service."""

from __future__ import annotations
