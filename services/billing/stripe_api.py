"""Calls to Stripe with the official SDK, shared by billing's features: a client from the
settings, and one call run off the event loop with Stripe's errors turned into aistack's."""

from __future__ import annotations

import asyncio
from typing import Any

import stripe

from libs.errors import BadGateway, NotFound, ValidationFailed
from services.billing.settings import BillingSettings


def optional_client(settings: BillingSettings) -> stripe.StripeClient | None:
    """A Stripe client, or None where Stripe is not configured."""
    if settings.stripe_api_key is None:
        return None
    bases: Any = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
    return stripe.StripeClient(settings.stripe_api_key.get_secret_value(), base_addresses=bases)


def stripe_client(settings: BillingSettings) -> stripe.StripeClient:
    """A Stripe client; 404 ``stripe_not_configured`` where Stripe is not configured."""
    client = optional_client(settings)
    if client is None:
        raise NotFound("Stripe is not configured here", code="stripe_not_configured")
    return client


async def stripe_call(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """One SDK call (blocking HTTP) off the event loop; Stripe's refusal is the caller's to
    fix (422 with its message), Stripe unreachable a 502."""
    try:
        result = await asyncio.to_thread(fn, *args, **kwargs)
    except stripe.InvalidRequestError as exc:
        raise ValidationFailed(
            f"Stripe refused: {exc.user_message or exc}", code="stripe_refused"
        ) from exc
    except stripe.CardError as exc:
        raise ValidationFailed(f"Card refused: {exc.user_message}", code="card_refused") from exc
    except stripe.StripeError as exc:
        raise BadGateway(f"Stripe failed: {exc}", code="stripe_unavailable") from exc
    out: dict[str, Any] = result.to_dict()
    return out
