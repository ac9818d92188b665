"""Hybrid search against its halves on a public retrieval set (the ChatterBot corpus's
question/answer pairs, English and Chinese: tests/rag/data/README.md), with each real local
embedding model. The figures per mode are in docs/benchmarks.md."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI

from libs.testing import principal
from services.rag.state import RagState
from tests.support.stacks.rag import run_worker, sdk_for
from tests.support.stacks.rag_eval import evaluate, index_answers, load_pairs


@pytest.mark.timeout(900)
async def test_hybrid_beats_vector_and_fulltext(committed: FastAPI) -> None:
    """all-MiniLM-L6-v2 (``embed``, the default): English vectors strong, Chinese weak, so
    each half misses what the other finds and hybrid beats both."""
    scores = await _scores(committed, "embed")
    for metric in ("ndcg@10", "recall@10"):
        hybrid = scores["hybrid"]["all"][metric]
        assert hybrid > scores["vector"]["all"][metric], (metric, scores)
        assert hybrid > scores["fulltext"]["all"][metric], (metric, scores)


@pytest.mark.timeout(900)
async def test_multilingual_model_finds_chinese_answers(committed: FastAPI) -> None:
    """multilingual-e5-small (``embed-multilingual``): Chinese questions find their answers
    by meaning (all-MiniLM-L6-v2's recall@10 there: 0.20); its vectors are strong in both
    languages, so hybrid adds recall over vector and stays near it on nDCG."""
    scores = await _scores(committed, "embed-multilingual")
    assert scores["vector"]["zh"]["recall@10"] > 0.45, scores
    assert scores["hybrid"]["zh"]["recall@10"] > 0.45, scores
    hybrid = scores["hybrid"]["all"]
    assert hybrid["recall@10"] > scores["vector"]["all"]["recall@10"], scores
    for metric in ("ndcg@10", "recall@10"):
        assert hybrid[metric] > scores["fulltext"]["all"][metric], (metric, scores)


async def _scores(app: FastAPI, model: str) -> dict[str, dict[str, dict[str, float]]]:
    client = sdk_for(app, principal())
    pairs = load_pairs()
    store, ids = await index_answers(client, pairs, model)
    await run_worker(RagState.of_app(app).settings, max_jobs=8)
    assert (await client.vector_stores.retrieve(store)).file_counts.completed == len(ids)
    scores = await evaluate(client, store, pairs, ids)
    print(model, json.dumps(scores, indent=1))
    return scores
