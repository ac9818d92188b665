"""A Stripe emulator for tests: localstripe (PyPI), a stateful fake Stripe server speaking
Stripe's wire format, run as its own process (``python -m localstripe``), with the products
and plans the shipped plans file sells. It has no Prices API: the plans file's
``stripe_price`` ids are created as Stripe plans, which subscription items accept too."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import stripe

from libs.embedded import free_port

API_KEY = "sk_test_aistack"
PLANS = {"price_pro_monthly": 2000, "price_team_monthly": 9000}


@contextmanager
def localstripe() -> Iterator[str]:
    """A fresh emulator (``--from-scratch``); its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "localstripe", "--port", str(port), "--from-scratch"],
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
