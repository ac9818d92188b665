"""A Stripe emulator for tests: localstripe (PyPI), a stateful fake Stripe server speaking
Stripe's wire format, extended where it lacks what aistack uses (stripe_emulator.py:
Checkout Sessions, the customer portal, idempotency keys, trials, invoice URLs), run as its
own process, with the products and plans the shipped plans file sells. It has no Prices API:
the plans file's ``stripe_price`` ids are created as Stripe plans, which subscription items
and Checkout line items accept too.

Webhooks: :func:`deliver` plays ``stripe listen --forward-to``: it signs the emulator's
events (read with the SDK) with the endpoint's secret and posts them to the app under test."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import stripe

from libs.embedded import free_port

API_KEY = "sk_test_aistack"
PLANS = {"price_pro_monthly": 2000, "price_team_monthly": 9000}


@contextmanager
def localstripe() -> Iterator[str]:
    """A fresh emulator (``--from-scratch``); its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fakes.stripe_emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/v1/customers", auth=(API_KEY, ""), timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "localstripe did not start"
                time.sleep(0.1)
        client = stripe.StripeClient(API_KEY, base_addresses={"api": url})
        for plan_id, amount in PLANS.items():
            product = client.v1.products.create(params={"name": plan_id})
            client.v1.plans.create(
                params={
                    "id": plan_id,
                    "product": product.id,
                    "amount": amount,
                    "currency": "usd",
                    "interval": "month",
                }
            )
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def card_payment_method(url: str) -> str:
    """A card PaymentMethod (what a SetupIntent collects in a browser)."""
    client = stripe.StripeClient(API_KEY, base_addresses={"api": url})
    pm = client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2035, "cvc": "123"},
        }
    )
    return str(pm.id)


def complete_checkout(session_url: str, card: str = "4242424242424242") -> dict[str, object]:
    """The customer paying on a Checkout Session's hosted page (its ``url``)."""
    resp = httpx.post(f"{session_url}/complete", data={"card": card}, timeout=10)
    resp.raise_for_status()
    out: dict[str, object] = resp.json()
    return out


async def deliver(
    url: str,
    app: httpx.AsyncClient,
    secret: str,
    types: Sequence[str],
    seen: set[str],
    *,
    newest_first: bool = False,
) -> list[str]:
    """Post the emulator's events of ``types`` not in ``seen`` (oldest first, or newest first
    to play them out of order), signed with ``secret``, to the app's webhook endpoint; their
    ids (added to ``seen``)."""
    client = stripe.StripeClient(API_KEY, base_addresses={"api": url})
    events: list[dict[str, Any]] = []
    params: Any = {"limit": 100}
    while True:
        page = client.v1.events.list(params=params)
        events += [e.to_dict() for e in page.data]
        if not page.has_more:
            break
        params["starting_after"] = page.data[-1].id
    fresh = sorted(
        (e for e in events if e["type"] in types and e["id"] not in seen),
        key=lambda e: e["created"],  # stable: the emulator lists in creation order
    )
    if newest_first:
        fresh.reverse()
    for event in fresh:
        payload = orjson.dumps(event).decode()
        header = stripe.WebhookSignature.generate_signature_header(payload, secret)
        resp = await app.post(
            "/v1/billing/webhooks/stripe",
            content=payload,
            headers={"stripe-signature": header, "content-type": "application/json"},
        )
        assert resp.status_code == 200, resp.text
        seen.add(event["id"])
    return [e["id"] for e in fresh]


async def deliver_until(
    url: str, app: httpx.AsyncClient, secret: str, types: Sequence[str], seen: set[str], wanted: str
) -> list[str]:
    """:func:`deliver` until an event of type ``wanted`` was delivered (the emulator sends
    events a moment after the change that makes them); the ids delivered."""
    client = stripe.StripeClient(API_KEY, base_addresses={"api": url})
    got: list[str] = []
    for _ in range(200):
        got += await deliver(url, app, secret, types, seen)
        if any(client.v1.events.retrieve(e).type == wanted for e in got):
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"the emulator sent no {wanted} event")
