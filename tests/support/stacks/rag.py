"""The rag service in tests: its settings over a temporary folder, and the official SDK
calling its app in-process as a principal (what the gateway forwards)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
from fastapi import FastAPI

from libs.identity import Principal
from libs.testing import auth_headers
from services.rag.settings import RagSettings


def rag_settings(tmp_path: Path, **overrides: Any) -> RagSettings:
    return RagSettings(storage_dir=str(tmp_path / "files"), **overrides)


def sdk_for(app: FastAPI, who: Principal) -> openai.AsyncOpenAI:
    """The official SDK calling ``app`` in-process as ``who``."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://rag.test")
    return openai.AsyncOpenAI(
        base_url="http://rag.test/v1",
        api_key="unused",
        http_client=http,
        default_headers=auth_headers(who),
        max_retries=0,
    )


def http_for(app: FastAPI) -> httpx.AsyncClient:
    """A raw client calling ``app`` in-process (headers per request)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rag.test")
