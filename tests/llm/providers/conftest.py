"""Fixtures of the provider tests: each chat vendor (``case``) and each embedding vendor
(``embed_case``) behind the llm app (``venv``, tests/llm/conftest.py)."""

from __future__ import annotations

import pytest

from tests.support.stacks.llm import Upstream
from tests.support.stacks.vendors import CHAT_VENDORS, EMBED_VENDORS, VENDORS, Case


@pytest.fixture(params=CHAT_VENDORS)
def case(request: pytest.FixtureRequest, upstreams: dict[str, Upstream]) -> Case:
    return Case(VENDORS[request.param], upstreams[request.param])


@pytest.fixture(params=EMBED_VENDORS)
def embed_case(request: pytest.FixtureRequest, upstreams: dict[str, Upstream]) -> Case:
    return Case(VENDORS[request.param], upstreams[request.param])
