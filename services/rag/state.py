"""What the rag app holds for its life (typed): settings, the file storage, the embedder."""

from __future__ import annotations

from libs.state import AppState
from services.rag.core.plan import PlanLimits
from services.rag.ingestion.embed import Embedder
from services.rag.settings import RagSettings
from services.rag.storage import Storage


class RagState(AppState):
    settings: RagSettings
    storage: Storage
    # one per process: it merges concurrent queries' embeddings into shared calls
    embedder: Embedder
    # the organizations' plan limits (storage, vector stores), cached from Redis
    plans: PlanLimits
