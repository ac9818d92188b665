"""The price catalogue: USD per 1M tokens per model, versioned by effective date.

Shared by billing (which prices the ledger) and the llm (which prices its usage events and a
call's worst case for budgets), loaded once per process from the shipped
``libs/data/prices.yaml`` and the operator's file (``BILLING_PRICES_CONFIG``). An event is
priced when billing records it, from the version in
effect at the event's ``created_at``, in exact decimals rounded to the ledger's 8 places;
a later price change adds a version and never touches what was recorded.

Lookup for (provider, model): an entry naming both, then one naming the model for any
provider, then the provider's ``"*"``. A model none of them lists is priced at what the
producer said (``cost_usd`` of the event: the llm's routing file ``price:``), recorded with
``price_ref = "producer"``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULTS = Path(__file__).with_name("data") / "prices.yaml"
_MILLION = Decimal(1_000_000)
QUANTUM = Decimal("0.00000001")
_EPOCH = date(2000, 1, 1)
ANY = "*"


class PriceEntry(BaseModel):
    """One version of one model's price (USD per 1M tokens)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    provider: str | None = Field(default=None, max_length=64)
    input: Decimal = Field(default=Decimal(0), ge=0)
    output: Decimal = Field(default=Decimal(0), ge=0)
    cached_input: Decimal | None = Field(default=None, ge=0)
    batch_discount: Decimal | None = Field(default=None, ge=0, le=1)
    effective_from: date | datetime = _EPOCH


class PricesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_discount: Decimal = Field(default=Decimal("0.5"), ge=0, le=1)
    include_defaults: bool = True
    prices: list[PriceEntry] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Price:
    """A model's price from ``effective_from`` on (USD per 1M tokens)."""

    provider: str | None
    model: str
    input: Decimal
    output: Decimal
    cached_input: Decimal
    batch_discount: Decimal
    effective_from: datetime

    @property
    def ref(self) -> str:
        """What the ledger records as the price used: ``provider/model@date``."""
        return f"{self.provider or ANY}/{self.model}@{self.effective_from.date().isoformat()}"

    def cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        batch: bool = False,
    ) -> Decimal:
        """Exact cost of a call, rounded half up to 8 decimal places."""
        cached = min(cached_tokens, prompt_tokens)
        total = (
            self.input * (prompt_tokens - cached)
            + self.cached_input * cached
            + self.output * completion_tokens
        ) / _MILLION
        if batch:
            total *= 1 - self.batch_discount
        return total.quantize(QUANTUM, rounding=ROUND_HALF_UP)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (decimals as strings) for the API and what billing publishes."""
        return {
            "provider": self.provider,
            "model": self.model,
            "input": str(self.input),
            "output": str(self.output),
            "cached_input": str(self.cached_input),
            "batch_discount": str(self.batch_discount),
            "effective_from": self.effective_from.isoformat(),
        }


def _instant(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.combine(value, time.min, UTC)


class PriceConfigError(Exception):
    """The prices file is missing, unreadable or invalid."""


@dataclass
class PriceCatalogue:
    """Every version of every price, looked up by model, provider and instant."""

    # (provider or None, model) -> versions sorted by effective_from
    versions: dict[tuple[str | None, str], list[Price]] = field(default_factory=dict)
    source: str = "built-in"

    @classmethod
    def from_files(cls, *files: PricesFile, source: str = "built-in") -> PriceCatalogue:
        catalogue = cls(source=source)
        for f in files:
            for entry in f.prices:
                discount = entry.batch_discount
                price = Price(
                    provider=entry.provider,
                    model=entry.model,
                    input=entry.input,
                    output=entry.output,
                    cached_input=entry.input if entry.cached_input is None else entry.cached_input,
                    batch_discount=f.batch_discount if discount is None else discount,
                    effective_from=_instant(entry.effective_from),
                )
                catalogue.add(price)
        return catalogue

    def add(self, price: Price) -> None:
        """Add a version (one with the same model, provider and date replaces it)."""
        versions = self.versions.setdefault((price.provider, price.model), [])
        versions[:] = [v for v in versions if v.effective_from != price.effective_from]
        bisect.insort(versions, price, key=lambda p: p.effective_from)

    def price_at(self, provider: str | None, model: str, at: datetime) -> Price | None:
        """The price in effect at ``at`` for ``model`` served by ``provider`` (None: none)."""
        keys: list[tuple[str | None, str]] = [(None, model)]
        if provider is not None:
            keys = [(provider, model), (None, model), (provider, ANY)]
        for key in keys:
            versions = self.versions.get(key)
            if not versions:
                continue
            i = bisect.bisect_right(versions, at, key=lambda p: p.effective_from)
            if i:
                return versions[i - 1]
        return None

    def current(self, at: datetime | None = None) -> list[Price]:
        """Every price in effect at ``at`` (now), plus versions taking effect later."""
        at = at or datetime.now(UTC)
        out: list[Price] = []
        for versions in self.versions.values():
            i = bisect.bisect_right(versions, at, key=lambda p: p.effective_from)
            out.extend(versions[max(i - 1, 0) :])
        return sorted(out, key=lambda p: (p.provider or "", p.model, p.effective_from))


def read_prices_file(path: Path) -> PricesFile:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PriceConfigError(f"cannot read prices file {path}: {exc}") from exc
    try:
        return PricesFile.model_validate(raw)
    except ValidationError as exc:
        raise PriceConfigError(f"invalid prices file {path}: {exc}") from exc


def load_catalogue(path: str | Path | None) -> PriceCatalogue:
    """The shipped defaults, extended (or replaced: ``include_defaults: false``) by ``path``."""
    defaults = read_prices_file(DEFAULTS)
    if path is None:
        return PriceCatalogue.from_files(defaults)
    own = read_prices_file(Path(path))
    files = [defaults, own] if own.include_defaults else [own]
    return PriceCatalogue.from_files(*files, source=str(path))
