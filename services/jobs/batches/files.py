"""rag's internal file routes, called as the batch's owner (docs/architecture.md "rag's
internal routes"): a batch's input file, and its output and error files written back."""

from __future__ import annotations

import time
from typing import Any

import httpx

from libs.errors import ServiceUnavailable
from libs.identity import INTERNAL_HEADER, Principal, sign_internal_token

TOKEN_TTL_S = 60


class FileNotFound(Exception):
    """rag has no such file for the owner's organization."""


class Tokens:
    """The owner's principal signed as the internal token, renewed before it expires."""

    def __init__(self, principal: Principal, secret: str) -> None:
        self.principal, self.secret = principal, secret
        self._token, self._at = "", 0.0

    def token(self) -> str:
        now = time.monotonic()
        if now - self._at > TOKEN_TTL_S / 2:
            self._token = sign_internal_token(self.principal, self.secret, TOKEN_TTL_S)
            self._at = now
        return self._token

    def header(self) -> dict[str, str]:
        return {INTERNAL_HEADER: self.token()}


def _unavailable(exc: Exception | None = None, status: int | None = None) -> ServiceUnavailable:
    why = f"answered {status}" if status else type(exc).__name__
    return ServiceUnavailable(f"The files service is unavailable ({why})", code="rag_unavailable")


class RagFiles:
    def __init__(self, http: httpx.AsyncClient, base_url: str, tokens: Tokens) -> None:
        self.http, self.base, self.tokens = http, base_url.rstrip("/"), tokens

    async def _get(self, path: str, wait_s: float = 30) -> httpx.Response:
        try:
            resp = await self.http.get(
                f"{self.base}{path}", headers=self.tokens.header(), timeout=wait_s
            )
        except httpx.HTTPError as exc:
            raise _unavailable(exc) from exc
        if resp.status_code == 404:
            raise FileNotFound(path)
        if resp.status_code != 200:
            raise _unavailable(status=resp.status_code)
        return resp

    async def get(self, file_id: str) -> dict[str, Any]:
        """The file object (``purpose``, ``bytes``, ...); :class:`FileNotFound`."""
        data: dict[str, Any] = (await self._get(f"/internal/files/{file_id}")).json()
        return data

    async def content(self, file_id: str) -> bytes:
        return (await self._get(f"/internal/files/{file_id}/content", wait_s=300)).content

    async def upload(
        self, name: str, data: bytes, expires_after: dict[str, Any] | None = None
    ) -> str:
        """Store ``data`` as a ``batch_output`` file; its id."""
        form: dict[str, str] = {"purpose": "batch_output"}
        if expires_after:
            form["expires_after[anchor]"] = str(expires_after["anchor"])
            form["expires_after[seconds]"] = str(expires_after["seconds"])
        try:
            resp = await self.http.post(
                f"{self.base}/internal/files",
                headers=self.tokens.header(),
                data=form,
                files={"file": (name, data, "application/jsonl")},
                timeout=300,
            )
        except httpx.HTTPError as exc:
            raise _unavailable(exc) from exc
        if resp.status_code != 200:
            raise _unavailable(status=resp.status_code)
        return str(resp.json()["id"])
