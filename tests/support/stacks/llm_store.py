"""Shared by the prompt store and conversation tests: an llm app whose routing points at an
upstream that is never called (these routes do not reach a provider)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI

from services.llm.app import build_app
from services.llm.settings import LlmSettings

KEY_ENV = "AISTACK_TEST_STORE_KEY"


def store_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    monkeypatch.setenv(KEY_ENV, "sk-unused")
    config = {
        "providers": {
            "nowhere": {
                "kind": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key_env": KEY_ENV,
            }
        },
        "models": {
            "default": {"context_window": 4096, "targets": [{"provider": "nowhere", "model": "m"}]}
        },
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    return build_app(LlmSettings(models_config=str(path)))
