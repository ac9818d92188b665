"""Sending one webhook message: signed by Standard Webhooks, to a public address only.

- **Signature**: ``webhook-id`` (the message id), ``webhook-timestamp``, ``webhook-signature``
  (``v1,<base64 HMAC>`` with the endpoint's secret, and with its previous secret too during a
  rotation's grace period), as the ``standardwebhooks`` package computes them.
- **SSRF**: only http(s); the host is resolved at delivery time and every address it resolves
  to must be public (no private, loopback, link-local, multicast, reserved), unless the
  platform allows private targets (development); the connection goes to the address checked
  (Host and TLS still name the host); no redirects; a timeout on the whole request; at most
  :data:`MAX_BODY` bytes of the answer are read.
- **Schedule** (Svix's): tries at 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import httpx
from standardwebhooks.webhooks import Webhook

SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
MAX_BODY = 64 * 1024
SNIPPET = 2000


class Refused(Exception):
    """The endpoint's address may not be called (its reason is the message)."""


def check_url(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL; Refused otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("only http and https URLs with a host")
    if parts.username or parts.password:
        raise Refused("no credentials in the URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise Refused("invalid port") from exc
    if not _valid_host(parts.hostname):
        raise Refused(f"{parts.hostname!r} is not a valid host name or IP address")
    return parts.hostname, port


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def _valid_host(host: str) -> bool:
    """An IP literal, or a DNS name (internationalised names through IDNA) whose labels are
    letters, digits, underscores and inner hyphens; a name ending in a number must be an IPv4
    address, as browsers read it (``256.256.256.256`` is neither)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    try:
        name = host.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = name.split(".")
    if not name or len(name) > 253 or labels[-1].isdigit():
        return False
    return all(_LABEL.fullmatch(label) for label in labels)


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


async def check_target(url: str, *, allow_private: bool) -> str | None:
    """Refused unless ``url`` is http(s) and (``allow_private`` aside) resolves only to public
    addresses; the address to connect to (None: let the client resolve, private allowed)."""
    host, port = check_url(url)
    if allow_private:
        return None
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
        addresses = [literal]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise Refused(f"cannot resolve {host}") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses or not all(_public(a) for a in addresses):
        raise Refused(f"{host} resolves to a private, loopback or link-local address")
    return str(addresses[0])


def pinned(url: str, address: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
    """The URL to request, extra headers and request extensions so that the connection goes to
    ``address`` (the one checked: a name that resolves elsewhere a moment later is not called)
    while Host and TLS (SNI, certificate) still name the URL's host."""
    if address is None:
        return url, {}, {}
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    netloc = literal + (f":{parts.port}" if parts.port else "")
    target = parts._replace(netloc=netloc).geturl()
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return target, {"host": parts.netloc.rsplit("@", 1)[-1]}, extensions


def signature(secrets: list[str], msg_id: str, at: datetime, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,`` signature per valid secret."""
    return " ".join(Webhook(s).sign(msg_id, at, body) for s in secrets)


@dataclass
class Outcome:
    status_code: int | None
    error: str | None
    latency_ms: int
    response: str

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def post(
    http: httpx.AsyncClient,
    url: str,
    *,
    msg_id: str,
    at: datetime,
    body: bytes,
    secrets: list[str],
    timeout_s: float,
    allow_private: bool,
) -> Outcome:
    """POST one message; never raises for the endpoint's faults (they are the outcome)."""
    started = time.monotonic()

    def done(code: int | None, error: str | None, text: str = "") -> Outcome:
        ms = round((time.monotonic() - started) * 1000)
        return Outcome(code, error, ms, text[:SNIPPET])

    try:
        address = await check_target(url, allow_private=allow_private)
    except Refused as exc:
        return done(None, f"refused: {exc}")
    target, host_header, extensions = pinned(url, address)
    headers = {
        **host_header,
        "content-type": "application/json",
        "user-agent": "aistack-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature(secrets, msg_id, at, body),
    }
    try:
        async with asyncio.timeout(timeout_s):
            req = http.build_request(
                "POST", target, content=body, headers=headers, extensions=extensions
            )
            resp = await http.send(req, stream=True, follow_redirects=False)
            try:
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_raw():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= MAX_BODY:
                        break
            finally:
                await resp.aclose()
    except TimeoutError:
        return done(None, f"timed out after {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return done(None, f"{type(exc).__name__}: {exc}"[:500])
    text = b"".join(chunks)[:SNIPPET].decode("utf-8", "replace")
    return done(resp.status_code, None if 200 <= resp.status_code < 300 else "status", text)
