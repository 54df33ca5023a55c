"""A gateway supervising a real llama.cpp worker on the tiny generated GGUF, through the openai SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests import http
from tests.procs import Proc, start_gateway

HELLO = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def llama_gw(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    from workers.tiny_models import write_tiny_gguf

    model = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    proc = start_gateway(log_dir, extra_args=["--worker", f"llamacpp:{model}"])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = {m["id"] for m in http.get_json(proc.url + "/v1/models", timeout=5)["data"]
                     if m.get("state") == "ready"}  # listed while it loads, with state "loading"
            if "llamacpp/tiny" in ready:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the llama.cpp worker did not join:\n" + proc.log()[-3000:])
        yield proc
    finally:
        proc.stop()


def client(gw: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat(gw: Proc, **kwargs: Any) -> Any:
    return client(gw).chat.completions.create(model="llamacpp/tiny", messages=HELLO, **kwargs)  # type: ignore[arg-type]


def test_streaming_yields_tokens_one_by_one(llama_gw: Proc) -> None:
    # 32 tokens: the worker coalesces tokens produced faster than it sends, and on a loaded machine
    # a short answer can fit in one frame; a longer one cannot
    stream = chat(llama_gw, max_tokens=32, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2  # streamed, not one blob
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 32


def test_parameters_are_honoured(llama_gw: Proc) -> None:
    greedy = [chat(llama_gw, max_tokens=6, temperature=0).choices[0].message.content for _ in range(2)]
    assert greedy[0] == greedy[1]
    sampled = {"max_tokens": 6, "temperature": 1.0, "top_p": 0.9, "seed": 7, "presence_penalty": 0.1,
               "frequency_penalty": 0.1, "stop": ["</never>"],
               "extra_body": {"top_k": 40, "min_p": 0.01, "repeat_penalty": 1.1}}
    seeded = [chat(llama_gw, **sampled).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]
    limited = chat(llama_gw, max_tokens=3, temperature=0)
    assert limited.usage.completion_tokens == 3 and limited.choices[0].finish_reason == "length"
    assert limited.usage.prompt_tokens > 0


def test_json_schema_response_format_parses(llama_gw: Proc) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "blue"]}},
              "required": ["ok", "color"], "additionalProperties": False}
    answer = chat(llama_gw, max_tokens=60, temperature=0,
                  response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    document = json.loads(answer.choices[0].message.content)
    assert isinstance(document["ok"], bool) and document["color"] in ("red", "blue")


def test_huggingface_spelling_reaches_the_gguf_worker(llama_gw: Proc) -> None:
    answer = client(llama_gw).chat.completions.create(model="huggingface/tiny", messages=HELLO,  # type: ignore[arg-type]
                                                      max_tokens=2, temperature=0)
    assert answer.usage is not None and answer.usage.completion_tokens == 2


# ---------------------------------------------------------------- /v1/responses on the local model


def test_responses_create_on_the_local_model(llama_gw: Proc) -> None:
    from openai.types.responses import Response

    response = client(llama_gw).responses.create(
        model="llamacpp/tiny", input="hello world", max_output_tokens=6, temperature=0
    )
    Response.model_validate(response.model_dump(), strict=True)
    assert response.model == "llamacpp/tiny"
    assert response.status == "incomplete"  # max_output_tokens reached
    assert response.output_text
    assert response.usage is not None and response.usage.output_tokens == 6
    assert response.usage.input_tokens > 0


def test_responses_stream_on_the_local_model_ends_with_completed_usage(llama_gw: Proc) -> None:
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    events = list(client(llama_gw).responses.create(
        model="llamacpp/tiny", input=[{"role": "user", "content": "hello world"}],
        instructions="Be brief.", max_output_tokens=5, temperature=0, stream=True,
    ))
    for event in events:
        adapter.validate_python(event.model_dump())
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert "response.output_text.delta" in types
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.usage is not None and final.response.usage.output_tokens == 5
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.response.output_text


def test_responses_greedy_text_matches_chat_completions(llama_gw: Proc) -> None:
    chat_text = chat(llama_gw, max_tokens=6, temperature=0).choices[0].message.content
    response = client(llama_gw).responses.create(
        model="llamacpp/tiny", input="hello world", max_output_tokens=6, temperature=0
    )
    assert response.output_text == chat_text
