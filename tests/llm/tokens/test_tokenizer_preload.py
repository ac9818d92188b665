"""LLM_TOKENIZER_PRELOAD: the named encodings load at start-up, in a worker thread, before the
app is ready; by default none does (each loads on first use)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from libs import tokens
from libs.testing import Infra, running
from services.llm.settings import LlmSettings
from services.llm.tokens import tokenizer
from tests.support.stacks.llm_store import store_app


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Encodings built from now on: (name, built off the event loop's thread); none loaded yet."""
    monkeypatch.setattr(tokens, "_encodings", {})
    real = tokens.build_encoding
    seen: list[tuple[str, bool]] = []

    def build(name: str) -> tokenizer.Encoding:
        seen.append((name, threading.current_thread() is not threading.main_thread()))
        return real(name)

    monkeypatch.setattr(tokens, "build_encoding", build)
    return seen


async def test_named_encodings_are_loaded_in_a_thread_before_the_app_is_ready(
    infra: Infra,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    builds: list[tuple[str, bool]],
) -> None:
    monkeypatch.setenv("LLM_TOKENIZER_PRELOAD", "cl100k_base")
    app = store_app(tmp_path, monkeypatch)
    assert not tokens.loaded("cl100k_base")
    async with running(app):
        assert tokens.loaded("cl100k_base") and not tokens.loaded("o200k_base")
        assert builds == [("cl100k_base", True)]
        # a request's first count finds it loaded
        assert tokens.get_encoding("cl100k_base").encode_ordinary("hello world") == [15339, 1917]
    assert builds == [("cl100k_base", True)]


async def test_by_default_nothing_is_loaded_at_start_up(
    infra: Infra,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    builds: list[tuple[str, bool]],
) -> None:
    monkeypatch.delenv("LLM_TOKENIZER_PRELOAD", raising=False)
    async with running(store_app(tmp_path, monkeypatch)):
        assert builds == []
        assert not tokens.loaded("o200k_base") and not tokens.loaded("cl100k_base")


def test_the_setting_takes_a_list_or_none_and_refuses_unknown_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_TOKENIZER_PRELOAD", " o200k_base, cl100k_base ,o200k_base")
    assert LlmSettings().tokenizers_to_preload == ("o200k_base", "cl100k_base")
    for off in ("none", "None", "", " , "):
        monkeypatch.setenv("LLM_TOKENIZER_PRELOAD", off)
        assert LlmSettings().tokenizers_to_preload == ()
    monkeypatch.delenv("LLM_TOKENIZER_PRELOAD")
    assert LlmSettings().tokenizers_to_preload == ()
    monkeypatch.setenv("LLM_TOKENIZER_PRELOAD", "o200k_base,gpt2")
    with pytest.raises(ValidationError, match="unknown tokenizer gpt2"):
        LlmSettings()
