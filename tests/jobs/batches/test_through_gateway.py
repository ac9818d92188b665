"""Issue 15's Batch API through the gateway with the official SDK: the local model answers a
batch's lines; a malformed line ends in the error file; list, cancel, 404s and validation."""

from __future__ import annotations

import asyncio
import json
import pickle
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from redis.asyncio import Redis

from libs.notify import Event, event_id_for, job_id_for
from libs.testing import Infra
from libs.usage import USAGE_STREAM
from tests.support.stacks.batches import batch_stack, chat_line, jsonl, wait_status


async def usage_of(redis: Redis, org: uuid.UUID, at_least: int) -> list[dict[str, Any]]:
    """The usage events of ``org`` on the usage stream (sent off the request path)."""
    for _ in range(200):
        events = []
        for _, fields in await redis.xrange(USAGE_STREAM):
            event = orjson.loads(fields[b"e"])
            if event.get("org_id") == str(org):
                events.append(event)
        if len(events) >= at_least:
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} usage events for {org}")


async def test_a_batch_on_the_local_model_completes_with_output_and_error_files(
    infra: Infra, tmp_path: Path, local_llm: str, redis: Redis
) -> None:
    async with batch_stack(infra, tmp_path, local_llm, loops=True) as stack:
        client = stack.sdk()
        data = jsonl(
            chat_line("greet", "Say hello.", max_tokens=4),
            chat_line("count", "Count to three.", max_tokens=4),
            "{this is not json",
        )
        f = await client.files.create(file=("requests.jsonl", data), purpose="batch")
        batch = await client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"team": "docs"},
        )
        assert batch.id.startswith("batch_") and batch.status == "validating"
        assert batch.metadata == {"team": "docs"} and batch.expires_at is not None

        done = await wait_status(client, batch.id, {"completed", "failed"})
        assert done.status == "completed", done.errors
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed) == (3, 2)
        assert done.request_counts.failed == 1
        assert done.in_progress_at and done.finalizing_at and done.completed_at
        assert done.output_file_id and done.error_file_id

        out = (await client.files.content(done.output_file_id)).text
        rows = [json.loads(line) for line in out.splitlines()]
        assert sorted(r["custom_id"] for r in rows) == ["count", "greet"]
        for r in rows:
            assert r["error"] is None and r["response"]["status_code"] == 200
            assert r["response"]["body"]["object"] == "chat.completion"
            assert r["id"].startswith("batch_req_")
        errors = (await client.files.content(done.error_file_id)).text
        (bad,) = [json.loads(line) for line in errors.splitlines()]
        assert bad["custom_id"] is None and bad["error"]["code"] == "invalid_json_line"
        output = await client.files.retrieve(done.output_file_id)
        assert output.purpose == "batch_output"
        # the llm metered each line as batch usage of the batch's owner
        usage = await usage_of(redis, stack.org, 2)
        assert [e["kind"] for e in usage] == ["batch", "batch"]

        # the batch is a job of the jobs service: its record shows it and its progress
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
            auth = {"authorization": f"Bearer {client.api_key}"}
            for _ in range(200):
                record = (await http.get(f"/v1/jobs/batch:{batch.id}", headers=auth)).json()
                if record.get("status") == "succeeded":
                    break
                await asyncio.sleep(0.05)
            assert record["status"] == "succeeded" and record["progress"] == 100, record
            assert record["message"] == "3 of 3 requests (1 failed)"

        # its owner is told (libs/notify: one delivery job, whose id derives from the batch's
        # end), by the batch's own kind rather than as a generic job.succeeded
        told = job_id_for(event_id_for("batch.completed", f"{batch.id}:completed"))
        raw = await redis.get(f"arq:job:{told}") or await redis.get(f"arq:result:{told}")
        assert raw is not None, "no delivery job for batch.completed"
        # with the batch's counts: its total too (once read before validation set it: 0)
        told_data = Event.model_validate(pickle.loads(raw)["k"]["event"]).data
        assert (told_data["total"], told_data["completed"], told_data["failed"]) == (3, 2, 1)

        # listed, newest first, with OpenAI's cursor page
        page = await client.batches.list(limit=10)
        assert [b.id for b in page.data] == [batch.id]
        # another organization sees none of it
        other = stack.sdk(stack.other_org)
        with pytest.raises(openai.NotFoundError):
            await other.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            await other.batches.cancel(batch.id)
        assert (await other.batches.list()).data == []
        # a finished batch is not cancelled
        with pytest.raises(openai.ConflictError):
            await client.batches.cancel(batch.id)


async def test_files_that_cannot_be_a_batch_are_refused_in_openais_shapes(
    infra: Infra, tmp_path: Path, local_llm: str
) -> None:
    async with batch_stack(infra, tmp_path, local_llm) as stack:
        client = stack.sdk()
        with pytest.raises(openai.NotFoundError):
            await client.batches.create(
                input_file_id="file-" + uuid.uuid4().hex,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
        notes = await client.files.create(file=("notes.txt", b"hello"), purpose="assistants")
        with pytest.raises(openai.BadRequestError) as exc:
            await client.batches.create(
                input_file_id=notes.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert exc.value.code == "invalid_file_purpose"
        assert exc.value.param == "input_file_id"

        async def failed(data: bytes, endpoint: str = "/v1/chat/completions") -> list[str]:
            f = await client.files.create(file=("in.jsonl", data), purpose="batch")
            b = await client.batches.create(
                input_file_id=f.id,
                endpoint=endpoint,  # type: ignore[arg-type]
                completion_window="24h",
            )
            done = await wait_status(client, b.id, {"completed", "failed"})
            assert done.status == "failed" and done.failed_at and done.errors is not None
            assert done.errors.object == "list" and done.errors.data
            return [f"{e.code}@{e.line}" for e in done.errors.data]

        assert await failed(b"just some prose\nand more prose\n") == ["invalid_file_format@None"]
        assert await failed(b"\xff\xfe\x00binary") == ["invalid_file_format@None"]
        assert await failed(jsonl(chat_line("a", "hi")), "/v1/embeddings") == ["invalid_url@1"]
        dupes = jsonl(chat_line("a", "hi"), chat_line("b", "hi"), chat_line("a", "again"))
        assert await failed(dupes) == ["duplicate_custom_id@3"]
