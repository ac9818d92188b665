"""The gateway's client to the services: one libs.transport pool, failures as gateway answers.

None retries: a POST is never sent twice.
"""

from __future__ import annotations

from gateway.settings import GatewaySettings
from libs.transport import Client, ConnectFailed, TimedOut, Timeouts, TransportError


class UpstreamError(Exception):
    """An upstream failure, already classified into the gateway's answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def unavailable(service: str) -> UpstreamError:
    return UpstreamError(503, "service_unavailable", f"The {service} service is unavailable")


def timed_out(service: str) -> UpstreamError:
    return UpstreamError(504, "gateway_timeout", f"The {service} service timed out")


def bad_gateway(service: str) -> UpstreamError:
    return UpstreamError(502, "bad_gateway", f"The {service} service failed to answer")


def upstream_error(exc: TransportError, service: str) -> UpstreamError:
    """What the client hears: 503 when no connection was made, 504 when it timed out, else 502."""
    if isinstance(exc, ConnectFailed):
        return unavailable(service)
    if isinstance(exc, TimedOut):
        return timed_out(service)
    return bad_gateway(service)


def make_upstream(settings: GatewaySettings) -> Client:
    """The pool every proxied request goes through."""
    return Client(
        Timeouts(
            connect=settings.upstream_connect_timeout,
            # a stream may stay silent that long between two events
            read=settings.upstream_read_timeout,
            write=settings.upstream_write_timeout,
            pool=settings.upstream_pool_timeout,
        ),
        max_connections=settings.upstream_max_connections,
    )
