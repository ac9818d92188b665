"""Request schemas of external sign-in (the answers are sessions' TokenPair)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

ProviderName = Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9][a-z0-9_\-]*$")]
