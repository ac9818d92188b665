"""The price catalogue: versions with effective dates, exact decimals, history never rewritten."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from libs.prices import PriceConfigError, load_catalogue
from libs.usage import prepare_usage, publish_usage_batch
from services.billing.models import UsageEventRecord
from tests.billing.conftest import Factory, usage_event
from tests.support.ledger import drain_stream


def _prices(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(body)
    return path


def test_shipped_defaults_price_local_models_at_zero_and_openai_exactly() -> None:
    prices = load_catalogue(None)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    local = prices.price_at("local", "qwen2.5-0.5b", at)
    assert local is not None and local.cost(10**6, 10**6) == 0
    mini = prices.price_at("openai", "gpt-4o-mini", at)
    assert mini is not None
    # 1M input at 0.15 + 1M output at 0.60; cached input at half price; batch half off
    assert mini.cost(1_000_000, 1_000_000) == Decimal("0.75")
    assert mini.cost(1000, 0, cached_tokens=1000) == Decimal("0.000075")
    assert mini.cost(3, 7, batch=True) == Decimal("0.00000233")  # 0.00000465 halved, half up
    assert prices.price_at("openai", "gpt-4o-mini", datetime(2020, 1, 1, tzinfo=UTC)) is None


async def test_a_price_change_applies_from_its_effective_date_only(
    tmp_path: Path, stream: Redis, factory: Factory
) -> None:
    path = _prices(
        tmp_path,
        "prices:\n"
        "  - {model: acme-1, input: 1.00, output: 2.00, effective_from: 2026-01-01}\n"
        "  - {model: acme-1, input: 3.00, output: 4.00, effective_from: 2026-06-01}\n",
    )
    prices = load_catalogue(path)
    assert prices.price_at("openai", "gpt-4o-mini", datetime.now(UTC)) is not None  # defaults
    org = uuid.uuid4()
    before = usage_event(
        org,
        model="acme-1",
        prompt_tokens=1000,
        completion_tokens=1000,
        created_at=datetime(2026, 5, 31, 23, 59, tzinfo=UTC),
    )
    after = before.model_copy(
        update={"request_id": "after", "created_at": datetime(2026, 6, 1, tzinfo=UTC)}
    )
    await publish_usage_batch([prepare_usage(before), prepare_usage(after)], stream)
    await drain_stream(stream, factory, prices)
    async with factory() as s:
        rows = dict(
            (
                await s.execute(
                    select(UsageEventRecord.request_id, UsageEventRecord.cost_usd).where(
                        UsageEventRecord.org_id == org
                    )
                )
            ).all()
        )
    assert rows == {before.request_id: Decimal("0.003"), "after": Decimal("0.007")}

    # a later change (even one dated in the past) never rewrites what is recorded, not even
    # when the event is delivered again
    await publish_usage_batch([prepare_usage(after)], stream)
    path.write_text(
        "prices:\n  - {model: acme-1, input: 9, output: 9, effective_from: 2026-01-01}\n"
    )
    await drain_stream(stream, factory, load_catalogue(path))
    async with factory() as s:
        cost = await s.scalar(
            select(UsageEventRecord.cost_usd).where(UsageEventRecord.request_id == "after")
        )
    assert cost == Decimal("0.007")


def test_an_invalid_prices_file_is_refused_with_its_reason(tmp_path: Path) -> None:
    path = _prices(tmp_path, "prices:\n  - {model: x, input: -1}\n")
    with pytest.raises(PriceConfigError, match="invalid prices file"):
        load_catalogue(path)
