"""POST /v1/responses through a real gateway against the fake OpenAI upstream.

``lmstudio/…``, ``openrouter/…`` and ``vllm/…`` go through the chat pipeline and back;
``openai/…`` goes to the fake's own /v1/responses (passthrough). Every streamed event
is re-validated with the SDK's pydantic types, the final object with Response.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import openai
import pytest
from openai.types.responses import Response

from tests.http import clear_records, records
from tests.integration.responses_helpers import check_events, delete, get, post
from tests.procs import Proc


@pytest.fixture
def client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def upstream(fake: Proc, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
    return [r for r in records(fake) if r["path"] == path]


@pytest.fixture(autouse=True)
def fresh_records(fake_openai: Proc) -> None:
    clear_records(fake_openai)


def responses_url(gateway: Proc) -> str:
    return gateway.url + "/v1/responses"


# --------------------------------------------------------------------------- the SDK

def test_sdk_create(client: openai.OpenAI, gateway: Proc, fake_openai: Proc) -> None:
    result = client.responses.create(model="lmstudio/echo", input="hello there", instructions="Be brief.")
    assert result.output_text == "echo: hello there"
    assert result.model == "lmstudio/echo"
    assert result.id.startswith("resp_") and result.status == "completed"
    assert result.usage is not None and result.usage.total_tokens == 8
    sent = upstream(fake_openai)[-1]["body"]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_sdk_stream_helper_gets_completed(client: openai.OpenAI) -> None:
    seen = []
    with client.responses.stream(model="lmstudio/echo", input="stream me") as stream:
        for event in stream:
            seen.append(event.type)
        final = stream.get_final_response()
    assert final.output_text == "echo: stream me"
    assert seen[:2] == ["response.created", "response.in_progress"]
    assert seen[-1] == "response.completed"
    assert "response.output_text.delta" in seen and "response.content_part.done" in seen


def test_function_call_round_trip(client: openai.OpenAI, fake_openai: Proc) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "description": "Weather",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    first = client.responses.create(model="lmstudio/tool", input="Weather in Paris?", tools=tools)
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id == "call_1" and call.id is not None and call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
    sent = upstream(fake_openai)[-1]["body"]
    assert sent["tools"][0]["function"]["name"] == "get_weather"

    second = client.responses.create(
        model="lmstudio/echo", tools=tools,
        input=[{"role": "user", "content": "Weather in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"}])
    assert second.status == "completed"
    messages = upstream(fake_openai)[-1]["body"]["messages"]
    assert messages[1]["role"] == "assistant"
    assert messages[1]["tool_calls"][0]["id"] == "call_1"
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": call.arguments}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}


# --------------------------------------------------------------------------- raw wire, strictly validated

def test_stream_events_validate_strictly(gateway: Proc) -> None:
    reply = post(responses_url(gateway), {"model": "lmstudio/echo", "input": "one two three", "stream": True})
    final = check_events(reply)
    assert final is not None and final.status == "completed"
    types = reply.types()
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * 4,
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    completed = reply.last("response.completed")["response"]
    assert completed["usage"] == {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8,
                                  "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                                  "output_tokens_details": {"reasoning_tokens": 0}}
    assert completed["output"][0]["content"] == [{"type": "output_text", "text": "echo: one two three",
                                                  "annotations": [], "logprobs": []}]


def test_tool_call_stream_validates(gateway: Proc) -> None:
    body = {"model": "lmstudio/tool", "input": "weather", "stream": True,
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]}
    reply = post(responses_url(gateway), body)
    final = check_events(reply)
    assert final is not None and final.output[0].type == "function_call"
    deltas = "".join(d["delta"] for _, d in reply.events if d["type"] == "response.function_call_arguments.delta")
    assert json.loads(deltas) == {"city": "Paris", "unit": "celsius"}
    assert reply.last("response.function_call_arguments.done")["arguments"] == deltas


def test_non_stream_object_validates_and_echoes(gateway: Proc, fake_openai: Proc) -> None:
    body = {"model": "openrouter/echo", "input": [{"role": "developer", "content": "Rules."},
                                                    {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
            "instructions": "Sys.", "max_output_tokens": 64, "temperature": 0.3, "top_p": 0.9,
            "metadata": {"k": "v"}, "reasoning": {"effort": "high", "summary": "auto"},
            "text": {"format": {"type": "json_schema", "name": "answer", "strict": True,
                                "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}},
            "prompt_cache_key": "pck-1", "parallel_tool_calls": False, "store": False}
    reply = post(responses_url(gateway), body)
    assert reply.status == 200, reply.body
    result = Response.model_validate(reply.body, strict=True)
    assert result.output_text == "echo: hi"
    assert (result.instructions, result.max_output_tokens, result.temperature, result.top_p) == ("Sys.", 64, 0.3, 0.9)
    assert result.metadata == {"k": "v"} and result.parallel_tool_calls is False and result.store is False
    assert result.text is not None and result.text.format is not None and result.text.format.type == "json_schema"
    assert result.reasoning is not None and result.reasoning.effort == "high"
    sent = upstream(fake_openai)[-1]["body"]
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user"]
    assert sent["max_tokens"] == 64 and sent["temperature"] == 0.3 and sent["top_p"] == 0.9
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True, "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}
    assert sent["reasoning_effort"] == "high"  # reasoning.effort → thinking → openrouter's reasoning_effort
    assert sent["prompt_cache_key"] == "pck-1"
    assert "parallel_tool_calls" not in sent  # no tools: some upstreams refuse it alone
    assert "store" not in sent and "text" not in sent and "reasoning" not in sent


def test_legacy_messages_accepted(gateway: Proc) -> None:
    reply = post(responses_url(gateway), {"model": "lmstudio/echo", "messages": [{"role": "user", "content": "old"}]})
    assert reply.status == 200, reply.body
    assert Response.model_validate(reply.body).output_text == "echo: old"


def test_neither_input_nor_messages_is_400(gateway: Proc) -> None:
    reply = post(responses_url(gateway), {"model": "lmstudio/echo"})
    assert reply.status == 400
    assert reply.body["error"]["type"] == "invalid_request_error" and reply.body["error"]["param"] == "input"


def test_unknown_fields_and_items_tolerated(gateway: Proc, fake_openai: Proc) -> None:
    body = {"model": "lmstudio/echo", "future_field": {"x": 1}, "truncation": "auto", "service_tier": "auto",
            "input": [{"type": "future_item", "payload": 1}, {"type": "item_reference", "id": "msg_1"},
                      {"role": "user", "content": [{"type": "input_text", "text": "hey"},
                                                   {"type": "future_part", "x": 1}]}]}
    reply = post(responses_url(gateway), body)
    assert reply.status == 200, reply.body
    assert "future_item" in reply.headers.get("x-acore-notice", "")
    sent = upstream(fake_openai)[-1]["body"]
    assert sent["messages"] == [{"role": "user", "content": "hey"}]
    assert "future_field" not in sent and "service_tier" not in sent


def test_early_upstream_error_keeps_status(gateway: Proc) -> None:
    for stream in (False, True):
        reply = post(responses_url(gateway), {"model": "lmstudio/error-429", "input": "x", "stream": stream})
        assert reply.status == 429 and reply.body["error"]["message"] == "fake upstream error 429"


def test_unknown_model_is_404(gateway: Proc) -> None:
    reply = post(responses_url(gateway), {"model": "nosuch/x", "input": "x"})
    assert reply.status == 404 and reply.body["error"]["code"] == "model_not_found"


def test_failure_mid_stream_is_response_failed(gateway: Proc) -> None:
    reply = post(responses_url(gateway), {"model": "lmstudio/mid-error", "input": "a b c", "stream": True})
    final = check_events(reply)
    assert reply.types()[-2:] == ["response.failed", "error"]
    assert "response.completed" not in reply.types()
    assert final is not None and final.status == "failed" and final.error is not None
    assert "upstream exploded" in reply.last("error")["message"]


def test_input_file_and_image_reach_the_attachment_hook(gateway: Proc, fake_openai: Proc) -> None:
    csv = "data:text/csv;base64," + base64.b64encode(b"name,qty\nbolts,12\n").decode()
    body = {"model": "lmstudio/echo", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "summarise"},
        {"type": "input_file", "filename": "parts.csv", "file_data": csv}]}]}
    reply = post(responses_url(gateway), body)
    assert reply.status == 200, reply.body
    content = upstream(fake_openai)[-1]["body"]["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "summarise"}
    assert content[1]["type"] == "text" and "| bolts | 12 |" in content[1]["text"]
    bad = post(responses_url(gateway), {"model": "lmstudio/echo", "input": [{"role": "user", "content": [
        {"type": "input_image", "file_id": "file-123"}]}]})
    assert bad.status == 404 and bad.body["error"]["code"] == "file_not_found"  # ids resolve through /v1/files


# --------------------------------------------------------------------------- store and previous_response_id

def test_store_and_previous_response_id(client: openai.OpenAI, gateway: Proc, fake_openai: Proc) -> None:
    first = client.responses.create(model="lmstudio/echo", input="remember 42", instructions="First system.")
    stored = get(f"{responses_url(gateway)}/{first.id}")
    assert stored.status == 200 and stored.body["id"] == first.id
    Response.model_validate(stored.body, strict=True)
    items = get(f"{responses_url(gateway)}/{first.id}/input_items")
    assert items.status == 200 and items.body["data"][0]["content"] == "remember 42"

    second = client.responses.create(model="lmstudio/echo", input="what number?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    messages = upstream(fake_openai)[-1]["body"]["messages"]
    # Earlier instructions are not carried over (as on OpenAI); the conversation is.
    assert messages == [{"role": "user", "content": "remember 42"},
                        {"role": "assistant", "content": "echo: remember 42"},
                        {"role": "user", "content": "what number?"}]
    # A chain: the third turn sees both earlier turns.
    client.responses.create(model="lmstudio/echo", input="third", previous_response_id=second.id)
    assert len(upstream(fake_openai)[-1]["body"]["messages"]) == 5

    deleted = delete(f"{responses_url(gateway)}/{first.id}")
    assert deleted.status == 200 and deleted.body == {"id": first.id, "object": "response", "deleted": True}
    assert get(f"{responses_url(gateway)}/{first.id}").status == 404


def test_unknown_previous_response_id_is_404(gateway: Proc) -> None:
    reply = post(responses_url(gateway), {"model": "lmstudio/echo", "input": "x", "previous_response_id": "resp_nope"})
    assert reply.status == 404 and reply.body["error"]["param"] == "previous_response_id"
    assert get(f"{responses_url(gateway)}/resp_nope").status == 404


def test_store_false_keeps_nothing(client: openai.OpenAI, gateway: Proc) -> None:
    result = client.responses.create(model="lmstudio/echo", input="secret", store=False)
    assert result.store is False
    assert get(f"{responses_url(gateway)}/{result.id}").status == 404


# --------------------------------------------------------------------------- openai/…: passthrough

def test_passthrough_non_stream(client: openai.OpenAI, fake_openai: Proc) -> None:
    result = client.responses.create(model="openai/echo", input="pass me", previous_response_id="resp_upstream1",
                                     store=True, include=["reasoning.encrypted_content"],
                                     tools=[{"type": "web_search"}])
    assert result.model == "openai/echo" and result.output_text == "echo: pass me"
    record = upstream(fake_openai, "/v1/responses")[-1]
    assert record["body"] == {"model": "echo", "input": "pass me", "previous_response_id": "resp_upstream1",
                              "store": True, "include": ["reasoning.encrypted_content"],
                              "tools": [{"type": "web_search"}]}
    assert record["headers"]["Authorization"] == "Bearer sk-test-server-key-123456"


def test_passthrough_continues_a_conversation_acore_stored(client: openai.OpenAI, fake_openai: Proc) -> None:
    first = client.responses.create(model="lmstudio/echo", input="local turn")
    client.responses.create(model="openai/echo", input="now openai", previous_response_id=first.id)
    sent = upstream(fake_openai, "/v1/responses")[-1]["body"]
    assert "previous_response_id" not in sent
    assert sent["input"][0] == {"type": "message", "role": "user", "content": "local turn"}
    assert sent["input"][1]["role"] == "assistant" and "id" not in sent["input"][1]
    assert sent["input"][2] == {"type": "message", "role": "user", "content": "now openai"}


def test_passthrough_stream(gateway: Proc, fake_openai: Proc) -> None:
    reply = post(responses_url(gateway), {"model": "openai/echo", "input": "stream pass", "stream": True,
                                          "client_metadata": {"a": "b"}})
    final = check_events(reply)
    assert final is not None and final.status == "completed" and final.model == "openai/echo"
    assert all(d["response"]["model"] == "openai/echo" for _, d in reply.events if "response" in d)
    assert upstream(fake_openai, "/v1/responses")[-1]["body"]["client_metadata"] == {"a": "b"}


def test_passthrough_stream_broken_off_fails(gateway: Proc) -> None:
    reply = post(responses_url(gateway), {"model": "openai/mid-error", "input": "a b", "stream": True})
    final = check_events(reply)
    assert reply.types()[-2:] == ["response.failed", "error"]
    assert final is not None and final.status == "failed"


def test_passthrough_upstream_error(gateway: Proc) -> None:
    reply = post(responses_url(gateway), {"model": "openai/error-400", "input": "x"})
    assert reply.status == 400 and reply.body["error"]["code"] == "code_400"
