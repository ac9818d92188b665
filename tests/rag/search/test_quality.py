"""Hybrid search beats both of its halves on a public retrieval set (the ChatterBot corpus's
question/answer pairs, English and Chinese: tests/rag/data/README.md), with the real local
embedding model. The figures per mode are in docs/benchmarks.md (``make bench``)."""

from __future__ import annotations

import json

from fastapi import FastAPI

from libs.testing import principal
from services.rag.state import RagState
from tests.support.stacks.rag import run_worker, sdk_for
from tests.support.stacks.rag_eval import evaluate, index_answers, load_pairs


async def test_hybrid_beats_vector_and_fulltext(committed: FastAPI) -> None:
    client = sdk_for(committed, principal())
    pairs = load_pairs()
    store, ids = await index_answers(client, pairs)
    await run_worker(RagState.of_app(committed).settings, max_jobs=8)
    assert (await client.vector_stores.retrieve(store)).file_counts.completed == len(ids)
    scores = await evaluate(client, store, pairs, ids)
    print(json.dumps(scores, indent=1))
    for metric in ("ndcg@10", "recall@10"):
        hybrid = scores["hybrid"]["all"][metric]
        assert hybrid > scores["vector"]["all"][metric], (metric, scores)
        assert hybrid > scores["fulltext"]["all"][metric], (metric, scores)
