"""Stripe Billing Meters for the Stripe emulator (stripe_emulator.py): meters, meter events
(an ``identifier`` used before is refused, as Stripe does) and event summaries, in Stripe's
wire format, on localstripe's store."""

from __future__ import annotations

import time
from typing import Any

from localstripe import resources as r
from localstripe.errors import UserError


class Meter(r.StripeObject):
    object = "billing.meter"
    _id_prefix = "mtr_test_"

    def __init__(
        self,
        display_name: str | None = None,
        event_name: str | None = None,
        default_aggregation: dict[str, str] | None = None,
        customer_mapping: dict[str, str] | None = None,
        value_settings: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise UserError(400, "Received unknown parameter: " + ", ".join(kwargs))
        formula = (default_aggregation or {}).get("formula")
        if not display_name or not event_name or formula not in ("sum", "count", "last"):
            raise UserError(400, "display_name, event_name and default_aggregation are required")
        super().__init__()
        self.display_name, self.event_name = display_name, event_name
        self.default_aggregation = {"formula": formula}
        self.customer_mapping = customer_mapping or {
            "event_payload_key": "stripe_customer_id",
            "type": "by_id",
        }
        self.value_settings = value_settings or {"event_payload_key": "value"}
        self.event_time_window = None
        self.status = "active"
        self.status_transitions = {"deactivated_at": None}
        self.updated = self.created

    @classmethod
    def _api_summaries(
        cls,
        id: str,
        customer: str | None = None,
        start_time: Any = None,
        end_time: Any = None,
        **kwargs: Any,
    ) -> Any:
        meter = cls._api_retrieve(id)
        start, end = r.try_convert_to_int(start_time), r.try_convert_to_int(end_time)
        if not isinstance(customer, str) or not isinstance(start, int) or not isinstance(end, int):
            raise UserError(400, "customer, start_time and end_time are required")
        key = meter.customer_mapping["event_payload_key"]
        values = [
            float(e.payload.get(meter.value_settings["event_payload_key"]) or 0)
            for e in METER_EVENTS.values()
            if e.event_name == meter.event_name
            and e.payload.get(key) == customer
            and start <= e.timestamp < end
        ]
        formula = meter.default_aggregation["formula"]
        if formula == "count":
            total: float = len(values)
        elif formula == "last":
            total = values[-1] if values else 0
        else:
            total = sum(values)
        summary = MeterEventSummary(meter.id, start, end, total)
        li = r.List(f"/v1/billing/meters/{id}/event_summaries")
        li._list = [summary]
        return li


class MeterEventSummary(r.StripeObject):
    object = "billing.meter_event_summary"
    _id_prefix = "mtrusg_test_"

    def __init__(self, meter: str, start: int, end: int, value: float) -> None:
        super().__init__()
        self.meter, self.start_time, self.end_time = meter, start, end
        self.aggregated_value = value


METER_EVENTS: dict[str, Any] = {}


class MeterEvent:
    """A meter event (Stripe gives them no id: ``identifier`` is unique, 24 h and more)."""

    def __init__(
        self,
        event_name: str | None = None,
        payload: dict[str, str] | None = None,
        identifier: str | None = None,
        timestamp: Any = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise UserError(400, "Received unknown parameter: " + ", ".join(kwargs))
        if not event_name or not isinstance(payload, dict):
            raise UserError(400, "event_name and payload are required")
        now = int(time.time())
        stamp = r.try_convert_to_int(timestamp) if timestamp is not None else now
        if not isinstance(stamp, int) or stamp < now - 35 * 86400 or stamp > now + 300:
            raise UserError(
                400, "timestamp must be within the past 35 days", {"param": "timestamp"}
            )
        identifier = identifier or f"emu_{r.random_id(20)}"
        if identifier in METER_EVENTS:
            raise UserError(
                400,
                f"An event already exists with identifier {identifier}.",
                {"code": "resource_already_exists", "param": "identifier"},
            )
        self.event_name, self.payload, self.identifier = event_name, payload, identifier
        self.timestamp, self.created = stamp, now
        METER_EVENTS[identifier] = self

    def _export(self, expand: Any = None) -> dict[str, Any]:
        return {
            "object": "billing.meter_event",
            "created": self.created,
            "event_name": self.event_name,
            "identifier": self.identifier,
            "livemode": False,
            "payload": self.payload,
            "timestamp": self.timestamp,
        }

    @classmethod
    def _api_create(cls, **data: Any) -> Any:
        return cls(**data)
