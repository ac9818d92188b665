"""The routing YAML: the shipped example, the built-in default, and refusing bad files."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from services.llm.app import build_app, default_provider_factory
from services.llm.routing.config import ConfigError, default_config, load_config
from services.llm.settings import LlmSettings

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "models.example.yaml"


def test_example_covers_every_provider_kind_and_builds() -> None:
    config = load_config(EXAMPLE)
    kinds = {spec.kind for spec in config.providers.values()}
    assert kinds >= {"openai", "azure", "anthropic", "gemini", "ollama", "local"}
    factory = default_provider_factory()
    for name, spec in config.providers.items():
        provider = factory(spec.kind, name, spec.adapter_config())
        assert provider.name == name
    default = config.aliases["default"]
    assert [t.provider for t in default.targets] == ["openai", "azure", "anthropic", "local"]
    # a target's own price overrides the alias price
    assert default.targets[0].price.input == Decimal("2.50")
    assert default.targets[2].price.output == Decimal("15.00")
    assert config.aliases["embed"].type == "embedding"


def test_built_in_default_is_the_local_provider() -> None:
    config = default_config()
    assert {s.kind for s in config.providers.values()} == {"local"}
    assert config.aliases["default"].targets[0].model == "smollm2-135m-instruct"
    assert config.aliases["embed"].targets[0].model == "all-minilm-l6-v2"
    assert config.aliases["embed"].type == "embedding"
    assert config.aliases["embed-multilingual"].targets[0].model == "multilingual-e5-small"


def test_price_cost_is_exact() -> None:
    price = load_config(EXAMPLE).aliases["fast"].targets[0].price
    assert price.cost(1_000_000, 1_000_000) == Decimal("0.75")
    assert price.cost(12, 7) == Decimal("0.00000600")


@pytest.mark.parametrize(
    "text",
    [
        "models:\n  default:\n    targets: [{provider: nowhere, model: x}]\n",
        "providers:\n  p: {kind: openai}\nmodels:\n  default:\n    targets: []\n",
        "providers:\n  p: {kind: openai}\n"
        "models:\n  d:\n    type: image\n    targets: [{provider: p, model: x}]\n",
        "providers: [1, 2\n",
    ],
)
def test_bad_files_fail_at_startup(tmp_path: Path, text: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        build_app(LlmSettings(models_config=str(path)))


def test_missing_file_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        build_app(LlmSettings(models_config=str(tmp_path / "absent.yaml")))
