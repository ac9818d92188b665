"""OpenAI's encodings offline (libs/tokens.py): the shipped rank files are the real ones,
checked on every load."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import tiktoken
import tiktoken.load
import tiktoken.model
from tiktoken_ext import openai_public

from libs import tokens
from tests.support.texts import SAMPLES


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_same_encoding_as_tiktokens_own_definition(name: str) -> None:
    """Our copy of pat_str / special tokens / file digest is what tiktoken_ext defines
    (its constructor is run with the download replaced by our checked file)."""
    seen: dict[str, Any] = {}

    def fake_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.update(url=url, expected_hash=expected_hash)
        return tokens.read_ranks(name)

    with mock.patch.object(openai_public, "load_tiktoken_bpe", fake_load):
        theirs = openai_public.ENCODING_CONSTRUCTORS[name]()
    spec = tokens.SPECS[name]
    assert seen["expected_hash"] == spec.sha256
    assert theirs["pat_str"] == spec.pat_str
    assert theirs["special_tokens"] == spec.special_tokens
    reference = tiktoken.Encoding(
        name,
        pat_str=theirs["pat_str"],
        mergeable_ranks=theirs["mergeable_ranks"],
        special_tokens=theirs["special_tokens"],
    )
    ours = tokens.get_encoding(name)
    for text in SAMPLES.values():
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text)


def _copy_data(tmp_path: Path) -> Path:
    for spec in tokens.SPECS.values():
        shutil.copy(tokens.DATA_DIR / spec.file, tmp_path / spec.file)
    return tmp_path


def test_shipped_files_match_their_recorded_sha256() -> None:
    for spec in tokens.SPECS.values():
        raw = gzip.decompress((tokens.DATA_DIR / spec.file).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == spec.sha256


def test_a_corrupt_rank_file_fails_loudly(tmp_path: Path) -> None:
    data = _copy_data(tmp_path)
    path = data / tokens.SPECS["cl100k_base"].file
    raw = bytearray(gzip.decompress(path.read_bytes()))
    # one rank changed: still a well-formed file, but not the real one
    at = raw.index(b" 1000\n")
    raw[at + 1 : at + 5] = b"1001"
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(tokens.TokenizerDataError, match="corrupt: sha256"):
        tokens.build_encoding("cl100k_base", data)

    path.write_bytes(b"not gzip at all")
    with pytest.raises(tokens.TokenizerDataError, match="cannot read"):
        tokens.build_encoding("cl100k_base", data)
    path.unlink()
    with pytest.raises(tokens.TokenizerDataError, match="cannot read"):
        tokens.build_encoding("cl100k_base", data)
    # the intact copy of the other file still loads
    assert tokens.build_encoding("o200k_base", data).encode_ordinary("hello world") == [
        24912,
        2375,
    ]


def test_a_broken_file_fails_every_use_without_being_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _copy_data(tmp_path)
    (data / tokens.SPECS["o200k_base"].file).write_bytes(gzip.compress(b"aGk= 0\n"))
    monkeypatch.setattr(tokens, "DATA_DIR", data)
    monkeypatch.setattr(tokens, "_encodings", {})
    monkeypatch.setattr(tokens, "_failed", {})
    reads: list[str] = []
    real_read = tokens.read_ranks

    def read(name: str, data_dir: Path | None = None) -> dict[bytes, int]:
        reads.append(name)
        return real_read(name, data_dir)

    monkeypatch.setattr(tokens, "read_ranks", read)
    for _ in range(2):
        with pytest.raises(tokens.TokenizerDataError, match=r"o200k_base rank file .* corrupt"):
            tokens.get_encoding("o200k_base")
    assert reads == ["o200k_base"] and not tokens.loaded("o200k_base")
    assert tokens.get_encoding("cl100k_base").encode_ordinary("hello world") == [15339, 1917]


def test_building_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("tried to download")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", no_network)
    assert tokens.build_encoding("cl100k_base").encode_ordinary("hello world") == [15339, 1917]
