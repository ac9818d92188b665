"""What the jobs app holds for its life (typed): its settings, the plans' cache."""

from __future__ import annotations

from libs.entitlements import EntitlementsCache
from libs.state import AppState
from services.jobs.settings import JobsSettings


class JobsState(AppState):
    settings: JobsSettings
    # organizations' plans (batch_jobs), as billing publishes them to Redis
    plans: EntitlementsCache
