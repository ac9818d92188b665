"""What the jobs app holds for its life (typed): its settings."""

from __future__ import annotations

from libs.state import AppState
from services.jobs.settings import JobsSettings


class JobsState(AppState):
    settings: JobsSettings
