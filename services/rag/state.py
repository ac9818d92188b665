"""What the rag app holds for its life (typed): settings and the file storage."""

from __future__ import annotations

from libs.state import AppState
from services.rag.settings import RagSettings
from services.rag.storage import Storage


class RagState(AppState):
    settings: RagSettings
    storage: Storage
