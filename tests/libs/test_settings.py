from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from libs.settings import ServiceSettings


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore")
    port: int = 9999


def test_shared_settings_read_without_prefix_and_prefix_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://shared/db")
    monkeypatch.setenv("PORT", "1234")  # not a shared field: must not leak in unprefixed
    s = DemoSettings()
    assert s.database_url == "postgresql+asyncpg://shared/db"
    assert s.port == 9999
    monkeypatch.setenv("DEMO_DATABASE_URL", "postgresql+asyncpg://mine/db")
    monkeypatch.setenv("DEMO_PORT", "4321")
    s = DemoSettings()
    assert s.database_url == "postgresql+asyncpg://mine/db"
    assert s.port == 4321


def test_default_secret_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.delenv("INTERNAL_TOKEN_SECRET", raising=False)
    with pytest.raises(ValidationError, match="internal_token_secret"):
        DemoSettings()
    monkeypatch.setenv("INTERNAL_TOKEN_SECRET", "short")
    with pytest.raises(ValidationError):
        DemoSettings()
    monkeypatch.setenv("INTERNAL_TOKEN_SECRET", "x" * 40)
    assert DemoSettings().environment == "production"


def test_default_secret_allowed_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "development")
    assert DemoSettings().is_development
