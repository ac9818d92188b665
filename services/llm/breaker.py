"""A circuit breaker per provider, kept in-process (each llm process learns on its own).

closed: calls pass; ``failures`` consecutive failures open it.
open: calls are refused (the router skips to the next target) for ``open_s`` seconds.
half-open: one trial call passes; success closes the breaker, failure opens it again.
"""

from __future__ import annotations

import time
from enum import IntEnum

from services.llm.metrics import BREAKER_STATE


class State(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(self, provider: str, *, failures: int = 5, open_s: float = 30.0) -> None:
        self.provider = provider
        self.threshold = max(failures, 1)
        self.open_s = open_s
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._gauge = BREAKER_STATE.labels(provider)
        self._gauge.set(State.CLOSED)

    @property
    def state(self) -> State:
        if self._state is State.OPEN and time.monotonic() - self._opened_at >= self.open_s:
            self._set(State.HALF_OPEN)
        return self._state

    def _set(self, state: State) -> None:
        self._state = state
        self._gauge.set(state)
        if state is not State.HALF_OPEN:
            self._trial_in_flight = False

    def allow(self) -> bool:
        """May a call go to this provider now? (In half-open, only one trial at a time.)"""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        if self._state is not State.CLOSED:
            self._set(State.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is State.HALF_OPEN or self._failures >= self.threshold:
            self._opened_at = time.monotonic()
            self._set(State.OPEN)

    def release(self) -> None:
        """A call ended without telling anything about health (client error, cancel)."""
        self._trial_in_flight = False
