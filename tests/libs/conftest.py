"""Fixtures shared by the tests of libs/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from libs.testing import Infra
from tests.support.faults.postgres import HangingProxy, hanging_postgres


@pytest.fixture
def proxy(infra: Infra) -> Iterator[HangingProxy]:
    """A proxy in front of the test PostgreSQL that a test can hang (support/faults/postgres)."""
    with hanging_postgres(infra.database_url) as p:
        yield p
