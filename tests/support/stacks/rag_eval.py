"""Retrieval quality of rag's search modes on the public answer-retrieval set in
``tests/rag/data/chatterbot_qa.json`` (every answer a document; each question's relevant
document is its answer): recall@k, MRR@10 and nDCG@10 per mode, English and Chinese apart."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson

DATA = Path(__file__).resolve().parents[2] / "rag" / "data" / "chatterbot_qa.json"
MODES = ("hybrid", "vector", "fulltext")


def load_pairs() -> list[dict[str, str]]:
    pairs: list[dict[str, str]] = orjson.loads(DATA.read_bytes())["pairs"]
    return pairs


async def index_answers(
    client: openai.AsyncOpenAI, pairs: list[dict[str, str]], embedding_model: str | None = None
) -> tuple[str, dict[str, str]]:
    """A store holding every distinct answer as a file (embedded with ``embedding_model``,
    default rag's); answer text -> file id."""
    answers = list(dict.fromkeys(p["answer"] for p in pairs))
    ids: dict[str, str] = {}
    for start in range(0, len(answers), 25):
        part = answers[start : start + 25]
        made = await asyncio.gather(
            *(
                client.files.create(file=(f"a{start + i}.txt", a.encode()), purpose="assistants")
                for i, a in enumerate(part)
            )
        )
        ids.update({a: f.id for a, f in zip(part, made, strict=True)})
    extra = {"embedding_model": embedding_model} if embedding_model else None
    vs = await client.vector_stores.create(name="retrieval set", extra_body=extra)
    values = list(ids.values())
    for start in range(0, len(values), 500):
        await client.vector_stores.file_batches.create(
            vector_store_id=vs.id, file_ids=values[start : start + 500]
        )
    return vs.id, ids


@dataclass
class Scores:
    queries: int = 0
    hits: dict[int, int] = field(default_factory=lambda: {1: 0, 5: 0, 10: 0})
    rr: float = 0.0
    ndcg: float = 0.0

    def add(self, rank: int | None) -> None:
        self.queries += 1
        if rank is None:
            return
        for k in self.hits:
            if rank <= k:
                self.hits[k] += 1
        if rank <= 10:
            self.rr += 1 / rank
            self.ndcg += 1 / math.log2(rank + 1)

    def as_dict(self) -> dict[str, Any]:
        n = max(self.queries, 1)
        return {
            "queries": self.queries,
            **{f"recall@{k}": round(v / n, 4) for k, v in self.hits.items()},
            "mrr@10": round(self.rr / n, 4),
            "ndcg@10": round(self.ndcg / n, 4),
        }


async def evaluate(
    client: openai.AsyncOpenAI,
    store_id: str,
    pairs: list[dict[str, str]],
    ids: dict[str, str],
    modes: tuple[str, ...] = MODES,
    concurrency: int = 8,
) -> dict[str, dict[str, dict[str, Any]]]:
    """mode -> language ("all", "en", "zh") -> scores."""
    gate = asyncio.Semaphore(concurrency)

    async def rank_of(mode: str, pair: dict[str, str]) -> int | None:
        async with gate:
            page = await client.vector_stores.search(
                store_id, query=pair["question"], max_num_results=10, extra_body={"mode": mode}
            )
        wanted = ids[pair["answer"]]
        for i, hit in enumerate(page.data, start=1):
            if hit.file_id == wanted:
                return i
        return None

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for mode in modes:
        ranks = await asyncio.gather(*(rank_of(mode, p) for p in pairs))
        by_lang = {"all": Scores(), "en": Scores(), "zh": Scores()}
        for pair, rank in zip(pairs, ranks, strict=True):
            by_lang["all"].add(rank)
            by_lang[pair["lang"]].add(rank)
        out[mode] = {lang: s.as_dict() for lang, s in by_lang.items()}
    return out
