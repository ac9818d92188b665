"""GATEWAY_UPSTREAM_CLIENT: aiohttp is the only client left; the removed ones are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings


@pytest.mark.parametrize("removed", ["pyreqwest", "split", "httpx"])
def test_a_removed_upstream_client_is_refused(
    monkeypatch: pytest.MonkeyPatch, removed: str
) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_CLIENT", removed)
    with pytest.raises(ValidationError, match=f"'{removed}' was removed: aiohttp is the only"):
        GatewaySettings()


@pytest.mark.parametrize("kept", ["auto", "aiohttp"])
def test_auto_and_aiohttp_are_accepted(monkeypatch: pytest.MonkeyPatch, kept: str) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_CLIENT", kept)
    assert GatewaySettings().upstream_client == kept
