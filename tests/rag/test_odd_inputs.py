"""Odd but well-formed client input never makes rag answer 5xx (the fuzz stage's contract)."""

from __future__ import annotations

from urllib.parse import quote

import httpx
from fastapi import FastAPI

from libs.testing import auth_headers, principal
from tests.support.stacks.rag import sdk_for


async def test_odd_values_are_4xx_or_ok(app: FastAPI, http: httpx.AsyncClient) -> None:
    who = principal()
    h = auth_headers(who)
    client = sdk_for(app, who)
    f = await client.files.create(file=("a.txt", b"hello"), purpose="assistants")
    vs = (await http.post("/v1/vector_stores", json={"name": "x"}, headers=h)).json()["id"]
    cases: list[tuple[str, str, object]] = [
        ("POST", "/v1/vector_stores", {"metadata": {"k": "a\u0000b"}}),
        ("POST", "/v1/vector_stores", {"name": "a\u0000b"}),
        ("POST", "/v1/vector_stores", {"file_ids": ["file-\u0000"]}),
        ("POST", "/v1/vector_stores", {"embedding_model": "\u0000"}),
        ("POST", f"/v1/vector_stores/{vs}/files", {"file_id": f.id, "attributes": {"k": "\u0000"}}),
        ("POST", f"/v1/vector_stores/{vs}/files", {"file_id": f.id, "attributes": {"k": 1e308}}),
        ("POST", f"/v1/vector_stores/{vs}/search", {"query": "a\u0000b"}),
        (
            "POST",
            f"/v1/vector_stores/{vs}/search",
            {"query": "x", "filters": {"type": "gt", "key": "\u0000", "value": 1e308}},
        ),
        (
            "POST",
            f"/v1/vector_stores/{vs}/search",
            {"query": "x", "filters": {"type": "eq", "key": "k", "value": "\u0000"}},
        ),
        ("POST", f"/v1/vector_stores/{vs}/search", {"query": ["a"] * 10, "mode": "fulltext"}),
        ("GET", f"/v1/vector_stores?after=vs_{'0' * 32}&before=vs_%00", None),
        ("GET", "/v1/files?purpose=%00&after=file-%00", None),
        ("GET", f"/v1/vector_stores/{vs}/files/{f.id}/content?page=-1", None),
        ("GET", f"/v1/vector_stores/{vs}/files/{f.id}/content?page=99999999999999999999", None),
        (
            "POST",
            f"/v1/vector_stores/{vs}/file_batches",
            {"file_ids": [f.id], "files": [{"file_id": f.id}]},
        ),
        ("POST", f"/v1/vector_stores/{vs}/answer", {"query": "\u0000"}),
        ("GET", "/v1/vector_stores/vs_%00", None),
    ]
    for method, path, body in cases:
        resp = await http.request(method, path, json=body, headers=h)
        assert resp.status_code < 500, (method, path, body, resp.text)
    for content_type, raw in (
        (
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc',
        ),
        ("multipart/form-data; boundary=xyz", b"garbage"),
        ("multipart/form-data", b"--x--"),
        ("text/plain", b"hello"),
    ):
        resp = await http.post(
            "/v1/files", content=raw, headers={**h, "content-type": content_type}
        )
        assert 400 <= resp.status_code < 500, (content_type, raw, resp.text)


async def test_any_stored_filename_downloads_with_its_name(http: httpx.AsyncClient) -> None:
    """Control characters in an uploaded name once made the download a 5xx, and non-ASCII
    names arrived as ``??.md``: the header keeps printable ASCII and gives the exact name
    in ``filename*`` (RFC 6266), which browsers and requests-style clients prefer."""
    h = auth_headers(principal())
    for raw_name, name, fallback in (
        (b"ctl\x01x.txt", "ctl\x01x.txt", "ctl_x.txt"),
        (b"tab\tx.txt", "tab\tx.txt", "tab_x.txt"),
        ("报销.md".encode(), "报销.md", "__.md"),
        (b"back\\slash.txt", "back\\slash.txt", "back_slash.txt"),
    ):
        # raw, as a client that does not escape names sends it (httpx would escape \x01)
        body = (
            b'--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="'
            + raw_name
            + b'"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--xyz--\r\n'
        )
        up = await http.post(
            "/v1/files",
            content=body,
            headers={**h, "content-type": "multipart/form-data; boundary=xyz"},
        )
        assert up.status_code == 200, up.text
        assert up.json()["filename"] == name
        resp = await http.get(f"/v1/files/{up.json()['id']}/content", headers=h)
        assert resp.status_code == 200, (name, resp.text)
        assert resp.content == b"hello"
        header = resp.headers["content-disposition"]
        assert f'filename="{fallback}"' in header, header
        assert f"filename*=UTF-8''{quote(name, safe='')}" in header, header
