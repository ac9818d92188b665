"""Settings of the rag service (env prefix ``RAG_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def default_storage_dir() -> str:
    """Where the local backend keeps file bytes: under the stack's data folder (``make run``:
    ``AISTACK_DATA_DIR``, default ``.data/local``)."""
    base = os.environ.get("AISTACK_DATA_DIR") or str(ROOT / ".data" / "local")
    return str(Path(base) / "rag-files")


class RagSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore")

    service_name: ClassVar[str] = "rag"
    port: int = 8003

    # --- storage of file bytes
    storage_backend: Literal["local", "s3"] = Field(
        default="local", description="where uploaded files' bytes live: local or s3"
    )
    storage_dir: str = Field(
        default="",
        description="local backend: the folder (unset: `rag-files` in AISTACK_DATA_DIR, "
        "`.data/local` by default)",
    )
    s3_bucket: str = Field(default="aistack-files", description="s3 backend: the bucket")
    s3_endpoint_url: str | None = Field(
        default=None, description="s3 backend: an S3-compatible endpoint (MinIO, Ceph, R2 ...)"
    )
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_prefix: str = Field(default="", description="s3 backend: key prefix inside the bucket")

    # --- limits per organization: its plan's when billing publishes one (storage_bytes,
    # vector_stores), else these; the largest upload is MAX_UPLOAD_BYTES
    org_max_storage_bytes: int = Field(
        default=10 * 1024 * MIB,
        gt=0,
        description="bytes of files one organization may keep when billing publishes no plan "
        "for it (its plan's storage_bytes applies otherwise)",
    )
    org_max_files: int = Field(default=10_000, gt=0, description="files per organization")
    org_max_vector_stores: int = Field(
        default=1_000,
        gt=0,
        description="vector stores per organization when billing publishes no plan for it "
        "(its plan's vector_stores applies otherwise)",
    )
    entitlements_ttl_seconds: float = Field(
        default=5.0,
        ge=0,
        description="how long a rag process keeps an organization's plan limits read from "
        "Redis (a plan change applies within this)",
    )
    batch_file_expiry_days: int = Field(
        default=30, ge=1, description="purpose=batch files expire after this (as OpenAI's)"
    )

    # --- embeddings and answers through the llm service
    llm_url: str = Field(
        default="http://127.0.0.1:8002", description="the llm service (internal HTTP)"
    )
    embedding_model: str = Field(
        default="embed", description="embedding model (alias) of new vector stores"
    )
    answer_model: str = Field(default="default", description="chat model of /answer")
    answer_min_similarity: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="/answer: a chunk sharing no word with the question counts as relevant "
        "only this similar (cosine); nothing relevant: no model call, the answer says so",
    )
    answer_min_similarity_by_model: dict[str, float] = Field(
        default_factory=lambda: {"multilingual-e5-small": 0.8},
        description="/answer: RAG_ANSWER_MIN_SIMILARITY for the embedding models named (the "
        "model the llm answered with, JSON): models whose cosines sit high, such as e5's "
        "0.7-0.9 for unrelated texts, need their own",
    )
    answer_timeout_s: float = Field(default=120.0, gt=0, description="/answer: the chat call")
    embed_batch_size: int = Field(default=64, ge=1, le=2048)
    embed_retries: int = Field(
        default=5, ge=0, description="embedding calls tried again this often before failing"
    )
    embed_backoff_s: float = Field(default=1.0, ge=0, description="first retry delay, doubling")
    embed_timeout_s: float = Field(default=120.0, gt=0)

    # --- ingestion
    ingest_lease_s: float = Field(
        default=60.0,
        gt=0,
        description="a file being ingested is held this long per step; past it (worker "
        "killed) the reconciler hands it to another job",
    )
    reconcile_interval_s: float = Field(
        default=30.0, gt=0, description="how often the worker looks for stalled files"
    )
    max_parsed_chars: int = Field(
        default=20_000_000, gt=0, description="text kept from one file (2M tokens at most)"
    )
    purge_interval_s: float = Field(
        default=60.0, gt=0, description="how often expired files and stores are purged"
    )


def storage_dir(settings: RagSettings) -> str:
    """The local backend's folder."""
    return settings.storage_dir or default_storage_dir()


def get_settings() -> RagSettings:
    return RagSettings()
