"""Prometheus metrics of the rag service and its worker."""

from __future__ import annotations

from libs.telemetry import Counter, Histogram

INGEST_STAGE_SECONDS = Histogram(
    "aistack_rag_ingest_stage_seconds",
    "Time of one ingestion stage of one file (parse, chunk, embed, index)",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180, 600),
)
INGEST_FAILURES = Counter(
    "aistack_rag_ingest_failures_total",
    "Store files whose ingestion failed, by stage and OpenAI's last_error code",
    ["stage", "code"],
)
INGEST_FILES = Counter(
    "aistack_rag_ingest_files_total", "Store files whose ingestion ended, by status", ["status"]
)
CHUNKS = Counter("aistack_rag_chunks_total", "Chunks written by ingestion")
SEARCH_SECONDS = Histogram(
    "aistack_rag_search_seconds",
    "Search latency by mode (query embedding included)",
    ["mode"],
    buckets=(0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
