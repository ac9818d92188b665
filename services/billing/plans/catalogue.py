"""Plans declared in configuration: the shipped defaults.yaml, or BILLING_PLANS_CONFIG."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from libs.entitlements import Entitlements, Limits

DEFAULTS = Path(__file__).with_name("defaults.yaml")


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str = Field(min_length=1, max_length=100)
    features: list[str] = Field(default_factory=list, description="Feature flags it switches on")
    limits: Limits = Field(default_factory=Limits)
    stripe_price: str | None = Field(default=None, description="Stripe price id (null: not sold)")
    trial_days: int = Field(default=0, ge=0, le=730)
    overage: Literal["block", "allow"] = "block"
    stripe_meter: str | None = Field(
        default=None,
        max_length=100,
        description="event_name of a Stripe Billing Meter (overage: allow only): each month's "
        "tokens are reported to it once the month ends",
    )

    def entitlements(self, status: str = "active", period_start: str | None = None) -> Entitlements:
        return Entitlements(
            plan=self.id,
            status=status,
            features=self.features,
            limits=self.limits,
            overage=self.overage,
            period_start=period_start,
        )


class PlansFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str = Field(description="The plan of a new organization")
    plans: list[Plan] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> PlansFile:
        ids = [p.id for p in self.plans]
        if len(set(ids)) != len(ids):
            raise ValueError("plan ids must be unique")
        if self.default not in ids:
            raise ValueError(f"default plan {self.default!r} is not declared")
        return self


class PlansConfigError(Exception):
    """The plans file is missing, unreadable or invalid."""


class PlanCatalogue:
    def __init__(self, spec: PlansFile) -> None:
        self.plans = {p.id: p for p in spec.plans}
        self.default = self.plans[spec.default]

    def get(self, plan_id: str) -> Plan | None:
        return self.plans.get(plan_id)


def load_plans(path: str | Path | None) -> PlanCatalogue:
    file = Path(path) if path else DEFAULTS
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PlansConfigError(f"cannot read plans file {file}: {exc}") from exc
    try:
        return PlanCatalogue(PlansFile.model_validate(raw))
    except ValidationError as exc:
        raise PlansConfigError(f"invalid plans file {file}: {exc}") from exc
