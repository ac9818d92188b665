"""localstripe extended where it lacks what aistack uses, in Stripe's wire format (the shapes
of Stripe's API reference, read back through the official SDK's objects in the tests):

- ``/v1/checkout/sessions`` (create, retrieve, list, expire) and the hosted page its ``url``
  names: ``POST {url}/complete`` is the customer paying there (a card is attached and made
  the default, the subscription created or the SetupIntent confirmed, and
  ``checkout.session.completed`` sent);
- ``/v1/billing_portal/sessions`` (create) and its page;
- Billing Meters: ``/v1/billing/meters`` (create, retrieve, list),
  ``/v1/billing/meter_events`` (an ``identifier`` used before is refused, as Stripe does)
  and ``/v1/billing/meters/{id}/event_summaries`` (one summary of the range asked);
- ``Idempotency-Key``: a key's first answer is replayed (``Idempotent-Replayed: true``); the
  same key with other parameters is refused (400 ``idempotency_error``), as Stripe does;
- subscription items naming a ``price`` (localstripe knows only ``plan``);
- trials: a subscription created with ``trial_period_days`` or ``trial_end`` is
  ``trialing`` (localstripe leaves it ``incomplete``), with ``trial_start``/``trial_end``;
  updating ``trial_end`` to ``now`` ends it (invoiced and ``active`` once paid);
- ``customer.subscription.updated`` on every update (localstripe sends none);
- invoices: ``hosted_invoice_url`` and ``invoice_pdf`` (served), ``invoice.finalized``,
  ``invoice.paid`` and ``invoice.deleted`` events besides localstripe's.

Run: ``python -m tests.support.fakes.stripe_emulator --port N`` (always from scratch);
``--seed`` creates the shipped plans' prices (as plans, 20 and 90 USD a month), and
``--webhook-url URL --webhook-secret whsec_...`` sends every event there, signed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from typing import Any

from aiohttp import web
from localstripe import resources as r
from localstripe import server
from localstripe.errors import UserError
from localstripe.webhooks import register_webhook

from tests.support.fakes.stripe_meters import Meter, MeterEvent

BASE = {"url": "http://127.0.0.1:8420"}


def _base() -> str:
    return BASE["url"]


# the fields of a hosted Checkout Session this emulator does not model, as Stripe sends them
# when unused (nullable ones as null): every field of Stripe's object is in the answer
SESSION_DEFAULTS: dict[str, Any] = {
    "adaptive_pricing": {"enabled": False},
    "after_expiration": None,
    "allow_promotion_codes": None,
    "allowed_payment_method_types": None,
    "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
    "billing_address_collection": None,
    "branding_settings": None,
    "client_secret": None,
    "collected_information": None,
    "consent": None,
    "consent_collection": None,
    "currency_conversion": None,
    "custom_fields": [],
    "custom_text": {
        "after_submit": None,
        "shipping_address": None,
        "submit": None,
        "terms_of_service_acceptance": None,
    },
    "customer_account": None,
    "customer_details": None,
    "discounts": [],
    "excluded_payment_method_types": [],
    "integration_identifier": None,
    "invoice": None,
    "invoice_creation": None,
    "locale": None,
    "managed_payments": None,
    "name_collection": None,
    "optional_items": None,
    "origin_context": None,
    "payment_link": None,
    "payment_method_collection": "always",
    "payment_method_configuration_details": None,
    "payment_method_options": {},
    "permissions": None,
    "phone_number_collection": {"enabled": False},
    "presentment_details": None,
    "recovered_from": None,
    "redirect_on_completion": None,
    "return_url": None,
    "saved_payment_method_options": None,
    "shipping_address_collection": None,
    "shipping_cost": None,
    "shipping_options": [],
    "submit_type": None,
    "tax_id_collection": {"enabled": False, "required": "never"},
    "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
    "wallet_options": None,
}


class CheckoutSession(r.StripeObject):
    object = "checkout.session"
    _id_prefix = "cs_test_"

    def __init__(
        self,
        mode: str | None = None,
        customer: str | None = None,
        line_items: list[dict[str, Any]] | None = None,
        success_url: str | None = None,
        cancel_url: str | None = None,
        client_reference_id: str | None = None,
        metadata: dict[str, str] | None = None,
        subscription_data: dict[str, Any] | None = None,
        customer_email: str | None = None,
        currency: str | None = None,
        payment_method_types: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise UserError(400, "Received unknown parameter: " + ", ".join(kwargs))
        if mode not in ("payment", "setup", "subscription"):
            raise UserError(400, "Missing or invalid required param: mode", {"param": "mode"})
        items = line_items or []
        if mode != "setup" and not items:
            raise UserError(
                400, "line_items is required in subscription mode", {"param": "line_items"}
            )
        plans = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("price"), str):
                raise UserError(400, "Each line item needs a price", {"param": "line_items"})
            plans.append(r.Plan._api_retrieve(item["price"]))  # 404 if unknown
        if customer is not None:
            r.Customer._api_retrieve(customer)
        trial = r.try_convert_to_int((subscription_data or {}).get("trial_period_days"))
        if trial is not None and (not isinstance(trial, int) or trial < 1):
            raise UserError(400, "Invalid trial_period_days", {"param": "subscription_data"})
        super().__init__()
        for name, value in SESSION_DEFAULTS.items():
            setattr(self, name, json.loads(json.dumps(value)))  # a copy of its own
        self.customer_creation = None if customer else "always"
        self.mode = mode
        self.customer = customer
        self.customer_email = customer_email
        self.client_reference_id = client_reference_id
        self.success_url = success_url
        self.cancel_url = cancel_url
        self.metadata = metadata or {}
        self.currency = currency or (plans[0].currency if plans else None)
        self.amount_subtotal = sum(
            p.amount * int(i.get("quantity") or 1) for p, i in zip(plans, items, strict=True)
        )
        self.amount_total = self.amount_subtotal
        self.status = "open"
        self.payment_status = "no_payment_required" if mode == "setup" else "unpaid"
        self.payment_method_types = payment_method_types or ["card"]
        self.subscription: str | None = None
        self.setup_intent: str | None = None
        self.payment_intent: str | None = None
        self.expires_at = int(time.time()) + 24 * 3600
        self.ui_mode = "hosted"
        self.url: str | None = f"{_base()}/checkout/{self.id}"
        self._items = items
        self._subscription_data = subscription_data or {}

    @classmethod
    def _api_update(cls, id: str, **data: Any) -> Any:
        raise UserError(405, "Method Not Allowed")

    @classmethod
    def _api_delete(cls, id: str) -> Any:
        raise UserError(405, "Method Not Allowed")

    @classmethod
    def _api_list_all(
        cls,
        url: str,
        limit: Any = None,
        starting_after: Any = None,
        customer: str | None = None,
        subscription: str | None = None,
        **kwargs: Any,
    ) -> Any:
        li = super()._api_list_all(url, limit=limit, starting_after=starting_after, **kwargs)
        li._list = [
            s
            for s in li._list
            if customer in (None, s.customer) and subscription in (None, s.subscription)
        ]
        li._list.sort(key=lambda s: s.created, reverse=True)
        return li

    @classmethod
    def _api_expire(cls, id: str, **kwargs: Any) -> Any:
        obj = cls._api_retrieve(id)
        if obj.status != "open":
            raise UserError(400, f"This Checkout Session is {obj.status}, not open")
        obj.status, obj.url = "expired", None
        r.schedule_webhook(r.Event("checkout.session.expired", obj))
        return obj

    def _complete(self, card: str) -> None:
        """What the customer paying on the hosted page does."""
        if self.status != "open":
            raise UserError(400, f"This Checkout Session is {self.status}, not open")
        if self.customer is None:
            self.customer = r.Customer(email=self.customer_email).id
        cus = r.Customer._api_retrieve(self.customer)
        self.customer_details = {
            "address": None,
            "email": cus.email,
            "name": cus.name,
            "phone": cus.phone,
            "tax_exempt": "none",
            "tax_ids": [],
        }
        pm = r.PaymentMethod(
            type="card",
            card={"number": card, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
        )
        r.PaymentMethod._api_attach(pm.id, customer=self.customer)
        cus.invoice_settings["default_payment_method"] = pm.id
        if self.mode == "subscription":
            data = self._subscription_data
            sub = r.Subscription(
                customer=self.customer,
                items=[{"plan": i["price"], "quantity": i.get("quantity")} for i in self._items],
                metadata=dict(data.get("metadata") or {}),
                trial_period_days=data.get("trial_period_days"),
            )
            self.subscription = sub.id
            invoice = r.Invoice._api_retrieve(sub.latest_invoice) if sub.latest_invoice else None
            paid = sub.status in ("active", "trialing")
            self.payment_status = "paid" if paid else "unpaid"
            if invoice is not None:
                self.payment_intent = invoice.payment_intent
        elif self.mode == "setup":
            seti = r.SetupIntent(customer=self.customer, metadata=dict(self.metadata))
            seti.payment_method, seti.status = pm.id, "succeeded"
            self.setup_intent = seti.id
        else:
            self.payment_status = "paid"
        self.status, self.url = "complete", None
        r.schedule_webhook(r.Event("checkout.session.completed", self))


class PortalSession(r.StripeObject):
    object = "billing_portal.session"
    _id_prefix = "bps_"

    def __init__(
        self,
        customer: str | None = None,
        return_url: str | None = None,
        configuration: str | None = None,
        locale: str | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise UserError(400, "Received unknown parameter: " + ", ".join(kwargs))
        if not isinstance(customer, str):
            raise UserError(400, "Missing required param: customer.", {"param": "customer"})
        r.Customer._api_retrieve(customer)
        super().__init__()
        self.customer = customer
        self.return_url = return_url
        self.configuration = configuration or "bpc_emulator"
        self.locale = locale
        self.on_behalf_of = None
        self.flow = None
        self.after_expiration = None
        self.customer_account = None
        self.url = f"{_base()}/billing_portal/{self.id}"

    @classmethod
    def _api_retrieve(cls, id: str) -> Any:  # Stripe has no GET for it either
        raise UserError(404, "Not Found")


# --- localstripe's own objects, completed ---------------------------------------------------

_sub_init = r.Subscription.__init__
_sub_update = r.Subscription._update


def _prices_as_plans(kwargs: dict[str, Any]) -> None:
    """Items name a ``price`` today; localstripe knows them as plans (same ids here)."""
    for item in kwargs.get("items") or []:
        if isinstance(item, dict) and "price" in item:
            item.setdefault("plan", item.pop("price"))


def _subscription_update(self: Any, **kwargs: Any) -> None:
    _prices_as_plans(kwargs)
    _sub_update(self, **kwargs)
    trial_over = self.trial_end is not None and int(self.trial_end) <= int(time.time())
    if self.status == "trialing" and trial_over:  # trial_end=now: the trial ends, billed
        self._create_invoice()
    r.schedule_webhook(r.Event("customer.subscription.updated", self))


def _subscription_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _prices_as_plans(kwargs)
    _sub_init(self, *args, **kwargs)
    if self.trial_end is None and self.trial_period_days is None:
        return
    now = int(time.time())
    self.trial_start = now
    if self.trial_end is None:
        self.trial_end = now + int(self.trial_period_days) * 86400
    self.status = "trialing"
    # the customer.subscription.created event was made above; it is sent a second later
    for key, obj in list(r.store.items()):
        created = key.startswith("event:") and obj.type == "customer.subscription.created"
        if created and obj.data["object"].get("id") == self.id:
            obj.data = {"object": self._export()}


r.Subscription.__init__ = _subscription_init
r.Subscription._update = _subscription_update
r.Invoice.hosted_invoice_url = property(lambda self: f"{_base()}/invoice/{self.id}")
r.Invoice.invoice_pdf = property(lambda self: f"{_base()}/invoice/{self.id}/pdf")

_finalize = r.Invoice._finalize
_paid = r.Invoice._on_payment_success


def _invoice_finalize(self: Any) -> None:
    _finalize(self)
    r.schedule_webhook(r.Event("invoice.finalized", self))


def _invoice_paid(self: Any) -> None:
    _paid(self)
    r.schedule_webhook(r.Event("invoice.paid", self))


def _invoice_delete(id: str) -> Any:
    invoice = r.Invoice._api_retrieve(id)
    gone = _delete(id)
    r.schedule_webhook(r.Event("invoice.deleted", invoice))
    return gone


_delete = r.Invoice._api_delete
r.Invoice._api_delete = staticmethod(_invoice_delete)
r.Invoice._finalize = _invoice_finalize
r.Invoice._on_payment_success = _invoice_paid


# --- HTTP -----------------------------------------------------------------------------------

_replies: dict[str, tuple[str, int, bytes]] = {}


@web.middleware
async def idempotency(request: web.Request, handler: Any) -> web.StreamResponse:
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key:
        return await handler(request)
    fingerprint = hashlib.sha256(request.path.encode() + await request.read()).hexdigest()
    seen = _replies.get(key)
    if seen is not None:
        if seen[0] != fingerprint:
            body = {
                "error": {
                    "type": "idempotency_error",
                    "message": "Keys for idempotent requests can only be used with the same "
                    "parameters they were first used with.",
                }
            }
            return web.json_response(body, status=400)
        return web.Response(
            status=seen[1],
            body=seen[2],
            content_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    response = await handler(request)
    if isinstance(response, web.Response) and response.status < 500:
        sent = response.body
        if isinstance(sent, bytes):
            _replies[key] = (fingerprint, response.status, sent)
    return response


def _page(title: str, body: str) -> web.Response:
    html = f"<!doctype html><title>{title}</title><h1>{title}</h1>{body}"
    return web.Response(text=html, content_type="text/html")


@web.middleware
async def pages(request: web.Request, handler: Any) -> web.StreamResponse:
    """The pages a browser opens (no API key): checkout, portal, invoice."""
    parts = request.path.strip("/").split("/")
    try:
        if parts[0] == "checkout" and len(parts) in (2, 3):
            session = CheckoutSession._api_retrieve(parts[1])
            if len(parts) == 3 and parts[2] == "complete" and request.method == "POST":
                form = await request.post()
                session._complete(str(form.get("card") or "4242424242424242"))
                return server.json_response(session._export())
            return _page("Checkout", f"<p>{session.amount_total} {session.currency}</p>")
        if parts[0] == "billing_portal" and len(parts) == 2:
            return _page("Billing portal", "<p>Manage your subscription.</p>")
        if parts[0] == "invoice" and len(parts) in (2, 3):
            invoice = r.Invoice._api_retrieve(parts[1])
            if len(parts) == 3:
                pdf = b"%PDF-1.4\n% invoice " + invoice.id.encode() + b"\n%%EOF\n"
                return web.Response(body=pdf, content_type="application/pdf")
            return _page(f"Invoice {invoice.id}", f"<p>{invoice.total} {invoice.currency}</p>")
    except UserError as exc:
        return exc.to_response()
    return await handler(request)


def _routes(app: web.Application) -> None:
    app.middlewares.insert(0, pages)
    app.middlewares.insert(0, idempotency)
    sessions = "/v1/checkout/sessions"
    app.router.add_post(sessions, server.api_create(CheckoutSession, sessions))
    app.router.add_get(sessions, server.api_list_all(CheckoutSession, sessions))
    app.router.add_get(sessions + "/{id}", server.api_retrieve(CheckoutSession, sessions))
    app.router.add_post(
        sessions + "/{id}/expire", server.api_extra(CheckoutSession._api_expire, sessions)
    )
    portal = "/v1/billing_portal/sessions"
    app.router.add_post(portal, server.api_create(PortalSession, portal))
    meters = "/v1/billing/meters"
    app.router.add_get(
        meters + "/{id}/event_summaries", server.api_extra(Meter._api_summaries, meters)
    )
    app.router.add_post(meters, server.api_create(Meter, meters))
    app.router.add_get(meters, server.api_list_all(Meter, meters))
    app.router.add_get(meters + "/{id}", server.api_retrieve(Meter, meters))
    app.router.add_post("/v1/billing/meter_events", server.api_create(MeterEvent, meters))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", action="store_true", help="create the shipped plans' prices")
    parser.add_argument("--webhook-url", help="send every event there (aistack's endpoint)")
    parser.add_argument("--webhook-secret", help="the endpoint's signing secret (whsec_...)")
    args = parser.parse_args()
    BASE["url"] = f"http://127.0.0.1:{args.port}"
    _routes(server.app)
    if args.seed:
        for price, amount in (("price_pro_monthly", 2000), ("price_team_monthly", 9000)):
            product = r.Product(name=price)
            r.Plan(id=price, product=product.id, amount=amount, currency="usd", interval="month")
    if args.webhook_url:
        register_webhook("aistack", args.webhook_url, args.webhook_secret or "", None)
    web.run_app(server.app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
