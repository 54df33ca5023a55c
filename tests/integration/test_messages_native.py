"""POST /v1/messages to anthropic/… (passed through byte for byte), ollama/… and a local tiny-GGUF
worker, with the official anthropic SDK; count_tokens from each kind of source."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests import http
from tests.fakes.anthropic_upstream import COUNTED_TOKENS, SIGNATURE, TOOL_INPUT
from tests.http import records
from tests.integration.messages_helpers import (
    PNG_B64,
    TOOLS,
    blocks,
    check_sequence,
    events,
    message,
    post,
    recording,
    sdk,
    types,
    user,
)
from tests.native import ANTHROPIC_KEY, CLIENT_KEY, Fakes, native_env
from tests.procs import Proc, start_gateway

pytest_plugins = ["tests.native_fixtures"]


@pytest.fixture(scope="module")
def gw(log_dir: Path, fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """anthropic/ and ollama/ at their fakes, a llama.cpp worker on the tiny GGUF; a bare claude-… name
    means anthropic (ABSTRACTCORE_DEFAULT_PROVIDER), as for Claude Code pointed at the gateway."""
    from workers.mlx_tiny import write_tiny_mlx_model
    from workers.tiny_models import write_tiny_gguf

    model = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    mlx_model = write_tiny_mlx_model(tmp_path_factory.mktemp("mlx") / "tiny-mlx")
    config = tmp_path_factory.mktemp("messages-native") / "acore.toml"
    config.write_text('[models."claude-local"]\ntargets = ["llamacpp/tiny"]\n')
    proc = start_gateway(log_dir, native_env(fakes, {"ABSTRACTCORE_DEFAULT_PROVIDER": "anthropic"}),
                         extra_args=["--worker", f"llamacpp:{model}", "--worker", f"mlx:{mlx_model}",
                                     "--config", str(config)])
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready = {m["id"] for m in http.get_json(proc.url + "/v1/models", timeout=5)["data"]
                     if m.get("state") == "ready"}
            if {"llamacpp/tiny", "mlx/tiny-mlx"} <= ready:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the llama.cpp or MLX worker did not join:\n" + proc.log()[-3000:])
        yield proc
    finally:
        proc.stop()


def anthropic_hits(fakes: Fakes, path: str = "/v1/messages") -> list[dict]:
    return [r for r in records(fakes.anthropic) if r["path"] == path]


# ------------------------------------------------------------------ anthropic/: the passthrough


def test_claude_code_recording_passes_through_byte_for_byte(gw: Proc, fresh: Fakes) -> None:
    recorded = recording()
    body = {**recorded["body"], "model": "claude-text"}
    raw = json.dumps(body, separators=(",", ":"))
    reply = http.post(gw.url + recorded["path"], content=raw.encode(),
                      headers={**recorded["headers"], "content-type": "application/json", "x-api-key": "client-key"})
    stream = events(reply)
    check_sequence(stream)
    (hit,) = anthropic_hits(fresh)
    assert hit["raw"] == raw  # the client's bytes, not a re-encoding
    assert hit["query"] == "beta=true"
    headers = {k.lower(): v for k, v in hit["headers"].items()}
    assert headers["anthropic-beta"] == recorded["headers"]["anthropic-beta"]
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["x-api-key"] == ANTHROPIC_KEY  # the server's key: the client's x-api-key is the gateway's
    assert "x-stainless-lang" not in headers and "x-app" not in headers  # only what means something upstream
    # The events are the upstream's own: the same as asking the fake directly.
    direct = http.post(fresh.anthropic.url + "/v1/messages", content=raw.encode(),
                       headers={"content-type": "application/json", "x-api-key": ANTHROPIC_KEY,
                                "anthropic-version": "2023-06-01"})
    assert reply.sse_data() == direct.sse_data()


def test_prefixed_model_is_rewritten_and_answers_kept(gw: Proc, fresh: Fakes) -> None:
    result = sdk(gw).messages.create(model="anthropic/claude-tool", max_tokens=100, tools=TOOLS,
                                     messages=user("Weather?"), thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in result.content] == ["thinking", "text", "tool_use"]
    assert result.content[0].signature == SIGNATURE  # type: ignore[union-attr]
    assert result.content[2].input == json.loads(TOOL_INPUT)  # type: ignore[union-attr]
    assert result.model == "claude-tool"  # Anthropic's answer, as it came
    assert (result.usage.cache_read_input_tokens, result.usage.cache_creation_input_tokens) == (30, 5)
    sent = anthropic_hits(fresh)[-1]["body"]
    assert sent["model"] == "claude-tool" and sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["tools"] == TOOLS


def test_passthrough_stream_with_thinking_and_signature(gw: Proc, fresh: Fakes) -> None:
    with sdk(gw).messages.stream(model="claude-think", max_tokens=2000, messages=user("hi"),
                                 thinking={"type": "enabled", "budget_tokens": 1024}) as helper:
        final = helper.get_final_message()
    assert final.content[0].type == "thinking" and final.content[0].signature == SIGNATURE
    assert final.content[1].text == "echo: hi"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 7


def test_passthrough_errors_keep_anthropic_type(gw: Proc, fresh: Fakes) -> None:
    client = sdk(gw)
    with pytest.raises(anthropic.BadRequestError) as invalid:
        client.messages.create(model="claude-invalid", max_tokens=5, messages=user("x"))
    assert invalid.value.body["error"] == {"type": "invalid_request_error",  # type: ignore[index]
                                           "message": "messages: roles must alternate"}
    overloaded = post(gw, {"model": "claude-overloaded", "max_tokens": 5, "messages": user("x")})
    assert overloaded.status == 529 and overloaded.json()["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.create(model="claude-text", max_tokens=5, messages=user("x"),
                               extra_headers={"X-Provider-API-Key": "bad-key"})
    assert anthropic_hits(fresh)[-1]["headers"]["x-api-key"] == "bad-key"
    client.messages.create(model="claude-text", max_tokens=5, messages=user("x"),
                           extra_headers={"X-Provider-API-Key": CLIENT_KEY})
    assert anthropic_hits(fresh)[-1]["headers"]["x-api-key"] == CLIENT_KEY
    stream = events(post(gw, {"model": "claude-midstream", "max_tokens": 5, "messages": user("a b"),
                              "stream": True}))
    assert types(stream)[-1] == "error" and stream[-1]["error"]["type"] == "overloaded_error"
    assert CLIENT_KEY not in gw.log() and ANTHROPIC_KEY not in gw.log()


def test_count_tokens_asks_anthropic(gw: Proc, fresh: Fakes) -> None:
    counted = sdk(gw).messages.count_tokens(model="claude-text", messages=user("hello"), system="Be brief.")
    assert counted.input_tokens == COUNTED_TOKENS + 1
    reply = post(gw, {"model": "anthropic/claude-text", "messages": user("a")}, path="/v1/messages/count_tokens")
    assert reply.headers["x-acore-token-count"] == "upstream" and reply.json() == {"input_tokens": COUNTED_TOKENS + 1}
    hit = anthropic_hits(fresh, "/v1/messages/count_tokens")[-1]
    assert hit["body"] == {"model": "claude-text", "messages": user("a")}
    assert hit["headers"]["x-api-key"] == ANTHROPIC_KEY


# ------------------------------------------------------------------ ollama/


def test_ollama_text_stream_and_tool_round_trip(gw: Proc, fresh: Fakes) -> None:
    client = sdk(gw)
    result = client.messages.create(model="ollama/llama-text", max_tokens=64, messages=user("hello there"),
                                    stop_sequences=["END"])
    assert result.content[0].text == "echo: hello there" and result.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert (result.usage.input_tokens, result.usage.output_tokens) == (9, 4)
    stream = events(post(gw, {"model": "ollama/llama-think", "max_tokens": 64, "messages": user("a b"),
                              "stream": True}))
    check_sequence(stream)
    assert [b["type"] for b in blocks(stream)] == ["thinking", "text"]
    first = client.messages.create(model="ollama/llama-tool", max_tokens=64, tools=TOOLS, messages=user("Weather?"))
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert call.type == "tool_use" and call.input == {"city": "Paris", "unit": "celsius"}
    second = client.messages.create(model="ollama/llama-tool", max_tokens=64, tools=TOOLS, messages=[
        *user("Weather?"), {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C"}]}])
    assert "18C" in second.content[0].text  # type: ignore[union-attr]
    length = message(post(gw, {"model": "ollama/llama-length", "max_tokens": 3, "messages": user("x")}))
    assert length.stop_reason == "max_tokens"
    image = message(post(gw, {"model": "ollama/llama-text", "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "text", "text": "see"}]}]}))
    assert "images: 1" in image.content[0].text  # type: ignore[union-attr]


def test_ollama_count_tokens_is_an_estimate(gw: Proc, fresh: Fakes) -> None:
    reply = post(gw, {"model": "ollama/llama-text", "messages": user("abcd" * 10)}, path="/v1/messages/count_tokens")
    assert reply.status == 200 and reply.json() == {"input_tokens": 10 + 4, "estimated": True}
    assert reply.headers["x-acore-token-count"] == "estimate"


# ------------------------------------------------------------------ a local worker (tiny GGUF)


def test_local_worker_stream_and_max_tokens(gw: Proc) -> None:
    stream = events(post(gw, {"model": "claude-local", "max_tokens": 12, "temperature": 0, "stream": True,
                              "messages": user("hello world")}))
    check_sequence(stream)
    assert stream[-2].delta.stop_reason == "max_tokens" and stream[-2].usage.output_tokens == 12
    assert stream[-2].usage.input_tokens + (stream[-2].usage.cache_read_input_tokens or 0) > 0
    result = sdk(gw).messages.create(model="llamacpp/tiny", max_tokens=5, extra_body={"temperature": 0},
                                     messages=user("hello world"))
    assert result.stop_reason == "max_tokens" and result.usage.output_tokens == 5
    assert result.model == "llamacpp/tiny"


@pytest.mark.parametrize("model", ["claude-local", "llamacpp/tiny", "mlx/tiny-mlx"])
def test_message_start_has_the_local_prompt_size(gw: Proc, model: str) -> None:
    """A local worker sends its prompt's size with its first chunk: message_start reports it (as Anthropic
    does), the same count message_delta ends with."""
    stream = events(post(gw, {"model": model, "max_tokens": 4, "temperature": 0, "stream": True,
                              "messages": user("hello world, once more")}))
    check_sequence(stream)
    start, end = stream[0].message.usage, stream[-2].usage
    assert start.input_tokens + (start.cache_read_input_tokens or 0) > 0
    assert (start.input_tokens, start.cache_read_input_tokens) == (end.input_tokens, end.cache_read_input_tokens)


@pytest.mark.parametrize("model", ["llamacpp/tiny", "mlx/tiny-mlx"])
def test_local_workers_count_the_prompt_a_generation_uses(gw: Proc, model: str) -> None:
    body = {"model": model, "messages": user("hello world"), "system": "Be brief.", "tools": TOOLS}
    reply = post(gw, body, path="/v1/messages/count_tokens")
    assert reply.status == 200 and reply.headers["x-acore-token-count"] == "tokenizer", reply.text
    generated = message(post(gw, {**body, "max_tokens": 1}))
    assert reply.json() == {"input_tokens": generated.usage.input_tokens + (generated.usage.cache_read_input_tokens or 0)}


def test_local_worker_counts_with_its_tokenizer(gw: Proc) -> None:
    client = sdk(gw)
    short = client.messages.count_tokens(model="llamacpp/tiny", messages=user("hello"))
    longer = client.messages.count_tokens(model="claude-local", messages=user("hello " * 50), system="Be brief.")
    assert 0 < short.input_tokens < longer.input_tokens
    reply = post(gw, {"model": "llamacpp/tiny", "messages": user("hello world")}, path="/v1/messages/count_tokens")
    assert reply.headers["x-acore-token-count"] == "tokenizer" and "estimated" not in reply.json()
    # The count is the prompt a generation of it uses.
    generated = message(post(gw, {"model": "llamacpp/tiny", "max_tokens": 1, "messages": user("hello world")}))
    assert reply.json()["input_tokens"] == generated.usage.input_tokens + (generated.usage.cache_read_input_tokens or 0)


def test_local_worker_names_the_stop_sequence(gw: Proc) -> None:
    greedy = {"model": "llamacpp/tiny", "max_tokens": 16, "temperature": 0, "messages": user("count")}
    text = message(post(gw, greedy)).content[0].text  # type: ignore[union-attr]
    assert len(text) >= 6, text
    stop = text[3:6]
    for stream in (False, True):
        reply = post(gw, {**greedy, "stop_sequences": ["never-said", stop], "stream": stream})
        if stream:
            final = events(reply)[-2]
            reason, sequence = final.delta.stop_reason, final.delta.stop_sequence
        else:
            stopped = message(reply)
            reason, sequence = stopped.stop_reason, stopped.stop_sequence
            assert stopped.content[0].text == text[: text.find(stop)]  # type: ignore[union-attr]
        assert (reason, sequence) == ("stop_sequence", stop)
