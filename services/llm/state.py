"""What the llm app holds for its life (typed): its settings and its chat service."""

from __future__ import annotations

from libs.state import AppState
from services.llm.chat.service import ChatService
from services.llm.responses.file_search import RagSearch
from services.llm.settings import LlmSettings


class LlmState(AppState):
    settings: LlmSettings
    llm: ChatService  # the call pipeline, built by the lifespan (services/llm/app.py)
    rag_search: RagSearch  # rag's search for the file_search tool (the lifespan too)
