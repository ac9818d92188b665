"""rag: ingestion throughput against the embedding model alone, search through the gateway at
100,000 chunks, HNSW recall against exact search, and the memory of rag and its worker.

Every process is a real one (gateway, auth, llm with its local models, rag, the rag worker) on
loopback, on embedded PostgreSQL and Redis; the load generator shares the machine.

- **Ingestion**: 40 Markdown files (paragraphs of the public retrieval set's sentences,
  tests/rag/data) attached as one batch, static chunks of 200 tokens; chunks/s from the batch's
  creation to its last file completed. In the same run, the same chunk texts (as the worker
  sends them) go to the llm's ``/v1/embeddings`` directly, batches of 64, four at a time as
  the worker's four jobs do: the model's own chunks/s.
- **Search at 100,000 chunks**: embedding 100,000 real texts would take an hour here, so the
  bench embeds 1,000 real texts (the retrieval set's questions and answers) with the local
  model and writes 100,000 chunks in SQL, each one a base text's vector plus a small random
  offset (renormalised: clusters of near neighbours, as real documents make) and the base
  text's lexemes; the HNSW index is built after the load. Searches go through the gateway
  with an API key, each embedding its query with the local model (no cache).
- **Recall**: 100 real queries, the top 10 by the HNSW index (the search's own settings:
  ef_search 100, iterative scan) against the exact top 10 (sequential scan).

    python -m tests.bench.rag_bench [--duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import orjson
import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token
from libs.settings import DEV_INTERNAL_SECRET
from services.rag.ingestion import segment
from tests.bench import load
from tests.bench.stack import ROOT, Proc, Stack, stack
from tests.support.stacks.rag_eval import load_pairs

LIMITS = {
    "GATEWAY_RATE_LIMIT_KEY_RPM": "100000000",
    "GATEWAY_RATE_LIMIT_USER_RPM": "100000000",
    "GATEWAY_RATE_LIMIT_ORG_RPM": "100000000",
}
CHUNKS = 100_000
BASES = 1_000
FILES = 100


def credentials(gateway: str) -> tuple[str, str]:
    """Sign up through the gateway: an API key with rag and llm scopes, and its org id."""
    email = f"bench-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(16)
    with httpx.Client(base_url=gateway, timeout=30) as client:
        client.post("/v1/auth/register", json={"email": email, "password": password})
        r = client.post("/v1/auth/login", json={"email": email, "password": password})
        r.raise_for_status()
        token = r.json()["access_token"]
        r = client.post(
            "/v1/api-keys",
            json={"name": "bench", "scopes": ["rag:read", "rag:write", "llm:use"]},
            headers={"authorization": f"Bearer {token}"},
        )
        r.raise_for_status()
        me = client.get("/v1/auth/me", headers={"authorization": f"Bearer {token}"}).json()
    return str(r.json()["key"]), str(me["org"]["id"])


def start_worker(s: Stack, env: dict[str, str]) -> Proc:
    log = open(s.logs / "rag-worker.log", "ab")  # noqa: SIM115
    popen = subprocess.Popen(
        [sys.executable, "-m", "libs.worker", "rag"],
        env={**s.env, **env},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc = Proc("rag-worker", "", popen)
    s.procs["rag-worker"] = proc
    return proc


def documents(n: int) -> list[tuple[str, bytes]]:
    sentences = [
        p["question"].rstrip("?") + "? " + p["answer"] for p in load_pairs() if p["lang"] == "en"
    ]
    rng = random.Random(7)
    docs = []
    for i in range(n):
        parts = [f"# Document {i}\n"]
        for k in range(12):
            parts.append(f"## Section {k}\n\n" + " ".join(rng.sample(sentences, 6)) + "\n")
        docs.append((f"doc{i}.md", "\n".join(parts).encode()))
    return docs


async def ingestion(
    gateway: str, key: str, llm: str, database_url: str, org: str
) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=120) as http:
        ids = []
        for name, body in documents(40):
            r = await http.post(
                "/v1/files", files={"file": (name, body)}, data={"purpose": "assistants"}
            )
            r.raise_for_status()
            ids.append(r.json()["id"])
        vs = (await http.post("/v1/vector_stores", json={"name": "ingestion"})).json()["id"]
        started = time.perf_counter()
        batch = (
            await http.post(
                f"/v1/vector_stores/{vs}/file_batches",
                json={
                    "file_ids": ids,
                    "chunking_strategy": {
                        "type": "static",
                        "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 40},
                    },
                },
            )
        ).json()
        while True:
            b = (await http.get(f"/v1/vector_stores/{vs}/file_batches/{batch['id']}")).json()
            if b["file_counts"]["in_progress"] == 0:
                break
            await asyncio.sleep(0.1)
        ingest_s = time.perf_counter() - started
        assert b["file_counts"]["completed"] == len(ids), b
    engine = create_async_engine(database_url)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT headings, text FROM rag.chunks WHERE vector_store_id = :vs ORDER BY id"
                ),
                {"vs": uuid.UUID(vs.removeprefix("vs_"))},
            )
        ).all()
    await engine.dispose()
    texts = [((" > ".join(h.split("\x1f")) + "\n") if h else "") + t for h, t in rows]
    # the model alone: the same texts embedded as ingestion does (passages), batches of 64,
    # one request at a time (the local model runs one batch at a time anyway; queued ones
    # could outwait the llm's request timeout with a slower model)
    who = Principal(org_id=uuid.UUID(org), scopes=["llm:use"])
    batches = [texts[i : i + 64] for i in range(0, len(texts), 64)]
    gate = asyncio.Semaphore(1)
    async with httpx.AsyncClient(base_url=llm, timeout=300) as http:

        async def one(part: list[str]) -> None:
            async with gate:
                r = await http.post(
                    "/v1/embeddings",
                    json={"model": "embed", "input": part, "input_type": "passage"},
                    headers={INTERNAL_HEADER: sign_internal_token(who, DEV_INTERNAL_SECRET, 600)},
                )
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in batches))
        embed_s = time.perf_counter() - started
    return {
        "files": len(ids),
        "chunks": len(texts),
        "ingest_chunks_per_s": len(texts) / ingest_s,
        "embed_chunks_per_s": len(texts) / embed_s,
        "ingest_s": ingest_s,
        "embed_s": embed_s,
    }


async def embed(llm: str, texts: list[str]) -> list[list[float]]:
    who = Principal(org_id=uuid.uuid4(), scopes=["llm:use"])
    out: list[list[float]] = []
    async with httpx.AsyncClient(base_url=llm, timeout=300) as http:
        for i in range(0, len(texts), 64):
            r = await http.post(
                "/v1/embeddings",
                json={"model": "embed", "input": texts[i : i + 64]},
                headers={INTERNAL_HEADER: sign_internal_token(who, DEV_INTERNAL_SECRET, 600)},
            )
            r.raise_for_status()
            out += [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]
    return out


def _vec(v: list[float]) -> str:
    return "[" + ",".join(f"{x:.6g}" for x in v) + "]"


async def load_chunks(
    database_url: str, store: str, org: str, bases: list[str], vectors: list[list[float]]
) -> float:
    """100,000 chunks in one store, written in SQL; returns the HNSW build's seconds."""
    rng = random.Random(11)
    store_id = uuid.UUID(store.removeprefix("vs_"))
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(
            text("CREATE TEMP TABLE bench_base (i int, body text, emb vector(384), lex text)")
        )
        await conn.execute(
            text(
                "INSERT INTO bench_base SELECT * FROM unnest(CAST(:i AS int[]), "
                "CAST(:b AS text[]), CAST(:e AS vector(384)[]), CAST(:l AS text[]))"
            ),
            {
                "i": list(range(len(bases))),
                "b": bases,
                "e": [_vec(v) for v in vectors],
                "l": [segment.tsvector_literal(b) for b in bases],
            },
        )
        noise = [[rng.gauss(0, 0.025) for _ in range(384)] for _ in range(997)]
        await conn.execute(text("CREATE TEMP TABLE bench_noise (i int, v vector(384))"))
        await conn.execute(
            text(
                "INSERT INTO bench_noise SELECT * FROM unnest(CAST(:i AS int[]), "
                "CAST(:v AS vector(384)[]))"
            ),
            {"i": list(range(997)), "v": [_vec(v) for v in noise]},
        )
        file_ids = [uuid.uuid4() for _ in range(FILES)]
        await conn.execute(
            text(
                "INSERT INTO rag.files (id, org_id, filename, purpose, bytes, sha256, "
                "content_type, storage_key, created_at, updated_at) "
                "SELECT f, :org, 'bench-' || n || '.txt', 'assistants', 1, '', 'text/plain', "
                "'bench/' || f, now(), now() "
                "FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS u(f, n)"
            ),
            {"ids": file_ids, "org": uuid.UUID(org)},
        )
        await conn.execute(
            text(
                "INSERT INTO rag.vector_store_files (vector_store_id, file_id, org_id, status, "
                "chunking, usage_bytes, generation, pending_generation, stage, chunk_count, "
                "attempts, created_at, updated_at) "
                "SELECT :vs, f, :org, 'completed', "
                '\'{"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}\', '
                "0, 1, 1, 'done', 1000, 0, now(), now() "
                "FROM unnest(CAST(:ids AS uuid[])) AS f"
            ),
            {"vs": store_id, "ids": file_ids, "org": uuid.UUID(org)},
        )
        await conn.execute(text("DROP INDEX rag.ix_chunks_hnsw_384"))
        await conn.execute(
            text(
                "INSERT INTO rag.chunks (vector_store_id, file_id, generation, seq, text, "
                "headings, tokens, visible, embedding, dims, tsv) "
                "SELECT :vs, (CAST(:ids AS uuid[]))[1 + g % :files], 1, g, "
                "b.body || ' (' || g || ')', '', 40, true, "
                "l2_normalize(b.emb + n.v), 384, CAST(b.lex AS tsvector) "
                "FROM generate_series(0, :n - 1) AS g "
                "JOIN bench_base b ON b.i = g % :bases JOIN bench_noise n ON n.i = g % 997"
            ),
            {"vs": store_id, "ids": file_ids, "files": FILES, "n": CHUNKS, "bases": len(bases)},
        )
        await conn.execute(
            text("UPDATE rag.vector_stores SET embedding_dims = 384 WHERE id = :vs"),
            {"vs": store_id},
        )
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("SET maintenance_work_mem = '512MB'"))
        started = time.perf_counter()
        await conn.execute(
            text(
                "CREATE INDEX ix_chunks_hnsw_384 ON rag.chunks USING hnsw "
                "((embedding::vector(384)) vector_cosine_ops) WHERE dims = 384"
            )
        )
        built = time.perf_counter() - started
        await conn.execute(text("VACUUM ANALYZE rag.chunks"))
    await engine.dispose()
    return built


async def recall(database_url: str, store: str, queries: list[list[float]]) -> float:
    """Mean overlap of the HNSW top 10 (the search's settings) with the exact top 10."""
    store_id = uuid.UUID(store.removeprefix("vs_"))
    sql = text(
        "SELECT id FROM rag.chunks c WHERE c.dims = 384 AND c.visible AND c.vector_store_id = :vs "
        "ORDER BY c.embedding::vector(384) <=> CAST(:q AS vector(384)) LIMIT 10"
    )
    engine = create_async_engine(database_url)
    found = 0
    async with engine.connect() as conn:
        for q in queries:
            async with conn.begin():
                await conn.execute(text("SET LOCAL hnsw.ef_search = 100"))
                await conn.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
                ann = {r[0] for r in await conn.execute(sql, {"vs": store_id, "q": _vec(q)})}
            async with conn.begin():
                await conn.execute(text("SET LOCAL enable_indexscan = off"))
                await conn.execute(text("SET LOCAL enable_bitmapscan = off"))
                exact = {r[0] for r in await conn.execute(sql, {"vs": store_id, "q": _vec(q)})}
            found += len(ann & exact)
    await engine.dispose()
    return found / (10 * len(queries))


def cpu_probe(s: Stack) -> Any:
    """CPU seconds used so far by the gateway, rag, the llm, PostgreSQL (its postmaster and
    backends, ended ones included) and the load generator."""
    procs = {n: psutil.Process(s.procs[n].popen.pid) for n in ("gateway", "rag", "llm")}
    pg = s.infra.postgres
    pid = int((pg.pgdata / "postmaster.pid").read_text().split()[0]) if pg else None
    me = psutil.Process()

    def probe() -> dict[str, float]:
        out = {n: sum(p.cpu_times()[:2]) for n, p in procs.items()}
        if pid is not None:
            postmaster = psutil.Process(pid)
            # its own and its ended backends' time (a pool's overflow connection ends within
            # the window: counting live backends only made the difference negative), and the
            # live backends'
            total = sum(postmaster.cpu_times()[:4])
            for p in postmaster.children():
                with contextlib.suppress(psutil.Error):
                    total += sum(p.cpu_times()[:2])
            out["postgres"] = total
        out["load generator"] = sum(me.cpu_times()[:2])
        return out

    return probe


async def search_load(
    gateway: str, key: str, store: str, query: str, duration: float, probe: Any = None
) -> list[load.Result]:
    headers = {"authorization": f"Bearer {key}"}
    url = f"{gateway}/v1/vector_stores/{store}/search"
    async with httpx.AsyncClient(timeout=30) as http:  # warm up every path, check it answers
        for mode in ("hybrid", "vector", "fulltext"):
            r = await http.post(url, json={"query": query, "mode": mode}, headers=headers)
            assert r.status_code == 200 and r.json()["data"], (mode, r.text)
    results = []
    for mode, concurrency in (("hybrid", 1), ("vector", 1), ("fulltext", 1), ("hybrid", 16)):
        results.append(
            await load.run(
                f"{mode} search",
                url,
                method="POST",
                json={"query": query, "max_num_results": 10, "mode": mode},
                headers=headers,
                concurrency=concurrency,
                duration=duration,
                cpu_probe=probe if concurrency > 1 else None,
            )
        )
    return results


def report(
    ing: dict[str, Any], built: float, rec: float, results: list[load.Result], rss: dict[str, float]
) -> str:
    ratio = ing["ingest_chunks_per_s"] / ing["embed_chunks_per_s"]
    lines = [
        f"Ingestion: {ing['files']} files, {ing['chunks']} chunks in {ing['ingest_s']:.1f} s: "
        f"**{ing['ingest_chunks_per_s']:.0f} chunks/s** end to end; the embedding model alone "
        "on the "
        f"same texts: {ing['embed_chunks_per_s']:.0f} chunks/s ({ing['embed_s']:.1f} s): "
        f"**{ratio:.0%}** of it.",
        "",
        f"Search over {CHUNKS:,} chunks (HNSW built in {built:.0f} s); recall@10 of the HNSW index "
        f"against exact search: **{rec:.3f}** (100 queries).",
        "",
        "| Search (through the gateway, query embedded by the local model) | Concurrency "
        "| Requests/s | p50 ms | p99 ms | Errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.concurrency} | {r.rps:,.1f} | {r.p50:.1f} | {r.p99:.1f} "
            f"| {r.errors} |"
        )
    for r in results:
        if r.cpu_ms:
            lines.append("")
            lines.append(
                f"CPU per {r.name} at c={r.concurrency}, by process: "
                + ", ".join(f"{n} {ms:.1f} ms" for n, ms in r.cpu_ms.items())
            )
    lines.append("")
    lines.append("RSS after the bench: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in rss.items()))
    return "\n".join(lines)


def run_bench(duration: float) -> str:
    with stack() as s:
        files = s.logs / "rag-files"
        auth = s.start("auth", "services.auth.app:app")
        llm = s.start("llm", "services.llm.app:app")
        # rag's pool as compose.yaml sizes it (sixteen concurrent searches, each holding a
        # connection while its query is embedded)
        rag_env = {"RAG_LLM_URL": llm.url, "RAG_STORAGE_DIR": str(files), "DB_POOL_SIZE": "20"}
        rag = s.start("rag", "services.rag.app:app", env=rag_env)
        worker = start_worker(s, rag_env)
        gateway = s.start(
            "gateway",
            "gateway.app:app",
            env={
                "GATEWAY_AUTH_URL": auth.url,
                "GATEWAY_RAG_URL": rag.url,
                "GATEWAY_LLM_URL": llm.url,
                **LIMITS,
            },
        )
        key, org = credentials(gateway.url)
        ing = asyncio.run(ingestion(gateway.url, key, llm.url, s.infra.database_url, org))
        pairs = load_pairs()
        bases = list(dict.fromkeys([p["answer"] for p in pairs] + [p["question"] for p in pairs]))[
            :BASES
        ]
        vectors = asyncio.run(embed(llm.url, bases))
        with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {key}"}) as http:
            store = http.post("/v1/vector_stores", json={"name": "100k"}).json()["id"]
        built = asyncio.run(load_chunks(s.infra.database_url, store, org, bases, vectors))
        queries = [p["question"] for p in pairs if p["lang"] == "en"][:100]
        rec = asyncio.run(recall(s.infra.database_url, store, asyncio.run(embed(llm.url, queries))))
        results = asyncio.run(
            search_load(
                gateway.url, key, store, "what is the theory of relativity", duration, cpu_probe(s)
            )
        )
        rss = {
            "rag": rag.rss_mb(),
            "rag worker": worker.rss_mb(),
            "llm": llm.rss_mb(),
            "gateway": gateway.rss_mb(),
        }
        with contextlib.suppress(Exception):
            (s.logs / "rag-bench.json").write_bytes(orjson.dumps({"ingestion": ing, "recall": rec}))
        return report(ing, built, rec, results, rss)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.rag_bench")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    args = parser.parse_args()
    print(run_bench(args.duration))


if __name__ == "__main__":
    main()
