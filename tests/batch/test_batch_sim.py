"""The simulator's Batch API speaks the published protocol: the official ``openai`` SDK (which implements
it) drives it over HTTP, and its behaviours — processing time, expiry, cancellation, validation failures,
per-request errors, shuffled output, half-price usage — are what batch mode is tested against."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from polars_llm import sim
from polars_llm.exceptions import ConfigError


def jsonl(prompts: list[str], *, model: str = "m", start: int = 0, **extra: Any) -> io.BytesIO:
    lines = [
        {
            "custom_id": f"req-{start + i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": p}], **extra},
        }
        for i, p in enumerate(prompts)
    ]
    return io.BytesIO("\n".join(json.dumps(line) for line in lines).encode())


@pytest.fixture
def held() -> Iterator[tuple[sim.SimServer, openai.OpenAI]]:
    with sim.serve(batch_seconds=None, api_key="sk-sim") as server:
        yield server, openai.OpenAI(base_url=str(server), api_key="sk-sim", max_retries=0)


def submit(client: openai.OpenAI, prompts: list[str], **extra: Any) -> Any:
    file = client.files.create(file=("in.jsonl", jsonl(prompts, **extra)), purpose="batch")
    assert file.purpose == "batch" and file.bytes > 0
    return client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"a": "b"}
    )


def lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_batch_runs_through_its_statuses_and_answers_like_the_online_endpoint(
    held: tuple[sim.SimServer, openai.OpenAI],
) -> None:
    server, client = held
    prompts = [f"prompt {i}" for i in range(20)] + ["rejected [[status:400]]"]
    batch = submit(client, prompts)
    assert batch.status == "validating" and batch.metadata == {"a": "b"}
    assert client.batches.retrieve(batch.id).status == "in_progress"
    assert [b.id for b in client.batches.list(limit=5)] == [batch.id]
    server.finish_batches()
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.completed_at is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
        21,
        20,
        1,
    )
    out = lines(client, done.output_file_id)
    ids = [line["custom_id"] for line in out]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(20)) and ids != sorted(ids)  # any order
    online = openai.OpenAI(base_url=str(server), api_key="sk-sim", max_retries=0)
    answer = online.chat.completions.create(model="m", messages=[{"role": "user", "content": "prompt 3"}])
    [line] = [line for line in out if line["custom_id"] == "req-3"]
    body = line["response"]["body"]
    assert line["response"]["status_code"] == 200 and line["error"] is None
    assert body["choices"][0]["message"]["content"] == answer.choices[0].message.content
    assert answer.usage is not None
    assert body["usage"]["cost"] == pytest.approx(answer.usage.model_extra["cost"] * 0.5)  # type: ignore[index]
    [error] = lines(client, done.error_file_id)
    assert error["custom_id"] == "req-20" and error["response"]["status_code"] == 400
    assert "error" in error["response"]["body"]
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_expiry_cancellation_and_failure(held: tuple[sim.SimServer, openai.OpenAI]) -> None:
    server, client = held
    expiring = submit(client, [f"e{i}" for i in range(4)])
    server.finish_batches("expired")
    expired = client.batches.retrieve(expiring.id)
    assert expired.status == "expired" and expired.expired_at is not None
    errors = lines(client, expired.error_file_id)
    assert {e["error"]["code"] for e in errors} == {"batch_expired"} and len(errors) == 2
    assert len(lines(client, expired.output_file_id)) == 2

    cancelling = submit(client, [f"c{i}" for i in range(4)])
    assert client.batches.cancel(cancelling.id).status == "cancelling"
    cancelled = client.batches.retrieve(cancelling.id)
    assert cancelled.status == "cancelled" and cancelled.error_file_id is None
    assert len(lines(client, cancelled.output_file_id)) == 2  # the rest is in no file

    for data, code in (
        (jsonl(["x"]).getvalue() + b"\n" + jsonl(["x"]).getvalue(), "duplicate_custom_id"),
        (
            jsonl(["x"]).getvalue() + b"\n" + jsonl(["y", "z"], model="other", start=1).getvalue(),
            "mismatched_model",
        ),
        (b"not json\n", "invalid_json_line"),
    ):
        file = client.files.create(file=("bad.jsonl", io.BytesIO(data)), purpose="batch")
        bad = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        failed = client.batches.retrieve(bad.id)
        assert failed.status == "failed" and failed.errors is not None and failed.errors.data
        assert failed.errors.data[0].code == code and failed.output_file_id is None


def test_processing_time_unknown_routes_and_no_batch_api() -> None:
    with sim.serve(batch_seconds=0.0) as server:
        client = openai.OpenAI(base_url=str(server), api_key="k", max_retries=0)
        batch = submit(client, ["now"])
        assert client.batches.retrieve(batch.id).status == "completed"
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_unknown")
        with pytest.raises(openai.BadRequestError):
            client.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions",
                                  completion_window="24h")  # fmt: skip
        server.configure(batch_api=False)
        with pytest.raises(openai.NotFoundError):
            client.batches.list()
        assert server.stats(per_prompt=False)["batch"]["calls"]["GET /batches"] == 1
    with pytest.raises(ConfigError, match="batch_outcome"):
        sim.SimConfig(batch_outcome="lost")
    with pytest.raises(ConfigError, match="batch_seconds"):
        sim.SimConfig(batch_seconds=-1.0)
