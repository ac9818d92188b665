"""Telemetry: Prometheus metrics and OpenTelemetry tracing for every process.

One pure-ASGI middleware gives each request its request id, a server span continuing the
caller's trace (W3C ``traceparent``), the request metrics and one access log line.

Metrics are never served on a process's public port: :func:`start_metrics_server` serves them
on a listener of its own (``METRICS_PORT``; the apps' lifespan and the worker start it). It is
prometheus_client's own server, on a thread: the event loop never renders a scrape, so a
scrape costs the request path no more than the GIL it briefly shares (an ASGI app on a second
uvicorn socket would render it on the loop, stalling every request for as long).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

import prometheus_client
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.context import new_request_id, request_id_var

log = logging.getLogger("aistack.access")

_KEPT_MAX = 4096


class _KeptChildren:
    """``labels()`` that keeps the children it looked up, for metrics counted on every request.

    prometheus_client takes a lock and builds a tuple of strings on every ``labels()`` call (a
    few µs each, several per request); here a seen label set is one dict lookup. At most
    ``_KEPT_MAX`` label sets are kept (past that, looked up each time as before).
    """

    def labels(self, *values: Any, **kwargs: Any) -> Any:
        if kwargs:
            return super().labels(*values, **kwargs)  # type: ignore[misc]
        kept: dict[tuple[Any, ...], Any] = self.__dict__.setdefault("_kept", {})
        child = kept.get(values)
        if child is None:
            child = super().labels(*values)  # type: ignore[misc]
            if len(kept) < _KEPT_MAX:
                kept[values] = child
        return child

    def remove(self, *values: Any) -> None:
        self.__dict__.pop("_kept", None)
        super().remove(*values)  # type: ignore[misc]

    def clear(self) -> None:
        self.__dict__.pop("_kept", None)
        super().clear()  # type: ignore[misc]


class Counter(_KeptChildren, prometheus_client.Counter):
    """A Prometheus counter whose labelled children are kept (see :class:`_KeptChildren`)."""


class Gauge(_KeptChildren, prometheus_client.Gauge):
    """A Prometheus gauge whose labelled children are kept (see :class:`_KeptChildren`)."""


class Histogram(_KeptChildren, prometheus_client.Histogram):
    """A Prometheus histogram whose labelled children are kept (see :class:`_KeptChildren`)."""


REQUESTS = Counter(
    "aistack_http_requests_total", "HTTP requests handled", ["service", "method", "route", "status"]
)
ERRORS = Counter(
    "aistack_http_errors_total", "HTTP responses with status >= 400", ["service", "route", "status"]
)
LATENCY = Histogram(
    "aistack_http_request_duration_seconds",
    "Time to the end of the response body",
    ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge("aistack_http_requests_in_flight", "Requests being handled", ["service"])
JOBS = Counter("aistack_jobs_total", "Background jobs finished", ["service", "function", "status"])
JOB_LATENCY = Histogram(
    "aistack_job_duration_seconds",
    "Background job run time",
    ["service", "function"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900),
)

# request.state key where a deprecated route leaves its answer headers (libs/deprecation.py)
DEPRECATION_STATE = "aistack_deprecation"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_tracing_configured = False


def setup_tracing(service: str, otlp_endpoint: str | None = None) -> None:
    """Install the SDK tracer provider once per process; export over OTLP/HTTP when configured.

    Spans are always created (so trace ids reach logs and jobs); they leave the process only
    when an endpoint is set. Without one, a span is recorded only when the caller's
    ``traceparent`` asks for it (sampled): the others carry their ids without the cost of
    recording attributes and timings nobody receives.
    """
    global _tracing_configured
    if _tracing_configured:
        return
    sampler = None  # the SDK's default, or OTEL_TRACES_SAMPLER
    if not otlp_endpoint and not os.environ.get("OTEL_TRACES_SAMPLER"):
        sampler = ParentBased(ALWAYS_OFF)
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"aistack-{service}"}), sampler=sampler
    )
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _tracing_configured = True


def inject_trace_headers(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Write the current trace context (``traceparent``) into outgoing headers or job metadata."""
    propagate.inject(carrier)
    return carrier


def extract_trace_context(carrier: Mapping[str, str]) -> otel_context.Context:
    """Read a trace context from incoming headers or job metadata."""
    return propagate.extract(carrier)


def current_trace_id() -> str | None:
    """Hex trace id of the active span, if any."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def metrics_response_body() -> tuple[bytes, str]:
    """The Prometheus exposition of this process's metrics."""
    return generate_latest(), CONTENT_TYPE_LATEST


def metrics_text() -> str:
    """This process's metrics in Prometheus' text format (what a scrape returns)."""
    return generate_latest().decode()


class MetricsServer:
    """A running metrics listener: where it listens, and how to stop it."""

    def __init__(self, host: str, port: int) -> None:
        try:
            self._httpd, self._thread = prometheus_client.start_http_server(port, addr=host)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} (set this "
                "process's METRICS_PORT to a free port, or 0 for no metrics listener)",
            ) from exc
        self._thread.name = f"metrics:{port}"
        self.host = host
        self.port = int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The scrape URL (any path answers; ``/metrics`` is the convention)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop listening (blocks up to half a second: the server's poll interval)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def start_metrics_server(host: str, port: int) -> MetricsServer:
    """Serve this process's metrics on ``host:port`` from a thread; raises OSError when the
    port cannot be had (a process must not run on without the metrics it was told to serve)."""
    server = MetricsServer(host, port)
    logging.getLogger("aistack.telemetry").info("metrics on %s", server.url)
    return server


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return str(path)
    override = scope.get("aistack.route")
    return str(override) if override else "unmatched"


# the status logged and counted for a request whose client left before any answer (nginx's)
CLIENT_CLOSED = 499


class ObservabilityMiddleware:
    """Request id, server span, metrics and access log for every HTTP request.

    On the path of every request of every process, so it does the least it can: it reads
    only the headers it needs, counts on metrics that keep their labelled children
    (:class:`Counter`, ...), and sets the span's attributes in one call.
    """

    def __init__(self, app: ASGIApp, service: str, quiet_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.service = service
        self.quiet_paths = set(quiet_paths)
        self.tracer = trace.get_tracer("aistack")
        self.in_flight = IN_FLIGHT.labels(service)
        # the headers the configured propagators read (traceparent, tracestate, baggage)
        self.trace_headers = frozenset(
            f.lower().encode("latin-1") for f in propagate.get_global_textmap().fields
        )

    def _count(self, method: str, route: str, status: int, elapsed: float) -> None:
        REQUESTS.labels(self.service, method, route, status).inc()
        LATENCY.labels(self.service, method, route).observe(elapsed)
        if status >= 400:
            ERRORS.labels(self.service, route, status).inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        carrier: dict[str, str] | None = None
        trace_headers = self.trace_headers
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                incoming = v.decode("latin-1")
            elif k in trace_headers:
                if carrier is None:
                    carrier = {}
                carrier[k.decode("latin-1")] = v.decode("latin-1")
        rid = incoming if incoming and _REQUEST_ID_RE.match(incoming) else new_request_id()
        rid_token = request_id_var.set(rid)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        method = scope["method"]
        path = scope["path"]
        status = 500
        started = False
        start = time.perf_counter()
        parent = extract_trace_context(carrier) if carrier else otel_context.get_current()
        span = self.tracer.start_span(f"{method} {path}", context=parent, kind=SpanKind.SERVER)
        ctx_token = otel_context.attach(trace.set_span_in_context(span, parent))
        rid_header = (b"x-request-id", rid.encode())
        self.in_flight.inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                hdrs = message.get("headers")
                if hdrs is None:
                    hdrs = message["headers"] = []
                elif not isinstance(hdrs, list):
                    hdrs = message["headers"] = list(hdrs)
                for k, _ in hdrs:
                    if k.lower() == b"x-request-id":
                        break
                else:
                    hdrs.append(rid_header)
                # a deprecated route's Deprecation/Sunset headers (libs/deprecation.py)
                deprecation = state.get(DEPRECATION_STATE)
                if deprecation is not None:
                    hdrs.extend(deprecation)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
            if not started:
                # the app answered nothing because the client left (mid-body, say): not a
                # server error; counted and logged as nginx's 499 "client closed request"
                status = CLIENT_CLOSED
        except Exception as exc:
            # rendered here (not by Starlette's outer ServerErrorMiddleware) so the 500 still
            # carries the request id, in the body and the header
            status = 500
            span.record_exception(exc)
            from libs.storage_errors import storage_error_response

            # PostgreSQL or Redis unreachable (503), or a value PostgreSQL refused (422)
            resp = storage_error_response(scope, exc)
            if resp is None:
                log.error("unhandled exception on %s %s", method, path, exc_info=exc)
            if started:
                raise
            if resp is None:
                from libs.errors import error_response, wants_openai

                resp = error_response(
                    500, "internal_error", "Internal server error", openai=wants_openai(scope)
                )
            await resp(scope, receive, send_wrapper)
            status = resp.status_code
        except BaseException as exc:
            status = 500
            span.record_exception(exc)
            raise
        finally:
            elapsed = time.perf_counter() - start
            route = _route_label(scope)
            span.set_attributes(
                {
                    "http.request.method": method,
                    "http.route": route,
                    "http.response.status_code": status,
                }
            )
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.update_name(f"{method} {route}")
            self.in_flight.dec()
            self._count(method, route, status, elapsed)
            if path not in self.quiet_paths and log.isEnabledFor(logging.INFO):
                extra: dict[str, Any] = {
                    "method": method,
                    "path": path,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                }
                log.info("%s %s %s", method, path, status, extra=extra)
            span.end()
            otel_context.detach(ctx_token)
            request_id_var.reset(rid_token)


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 in the error shape, streamed or not
    (OpenAI's shape on the app's OpenAI-compatible routes, so its SDKs raise on it)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, overrides: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # path prefix -> its own limit (uploads), longest prefix first
        self.overrides = sorted((overrides or {}).items(), key=lambda kv: -len(kv[0]))

    def _limit(self, path: str) -> int:
        for prefix, limit in self.overrides:
            if path == prefix or path.startswith(prefix + "/"):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self._limit(scope["path"]) if self.overrides else self.max_bytes
        if max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        chunked = False
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = 0
                if declared > max_bytes:
                    await self._refuse(scope, receive, send, max_bytes)
                    return
            elif k == b"transfer-encoding":
                chunked = True
        if not chunked and (declared is not None or scope.get("http_version") != "2"):
            # the server delivers exactly Content-Length bytes (none without one, HTTP/1.x):
            # nothing to count, and no wrapper on every message of the response
            await self.app(scope, receive, send)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise _BodyTooLarge(max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if response_started:
                raise
            await self._refuse(scope, receive, send, max_bytes)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        from libs.errors import http_exception_response, wants_openai

        resp = http_exception_response(_BodyTooLarge(max_bytes), openai=wants_openai(scope))
        await resp(scope, receive, send)


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` so FastAPI's body parsing re-raises it as a 413 (rendered by
    the app's handler, or by the middleware when nothing caught it)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(status_code=413, detail=f"Request body exceeds {max_bytes} bytes")
        self.details = {"limit_bytes": max_bytes}
