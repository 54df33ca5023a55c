"""Request bodies in the shapes Codex CLI sends to /v1/responses, replayed with aiohttp.

Codex always streams, sends tools of types function, custom (freeform, with a
grammar), web_search and namespace, or (its "lite" form) ``tools: []`` with the
tool list in an ``additional_tools`` input item and effort changes in
``configuration_update`` items; ``store: false``, ``include``, ``client_metadata``,
``prompt_cache_key`` and its own headers. The turn fails unless the stream ends
with ``response.completed`` carrying usage.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.http import Headers, Reply, records
from tests.integration.responses_helpers import check_events, decoded, get
from tests.procs import Proc

CODEX_HEADERS = {
    "Accept": "text/event-stream",
    "originator": "codex_exec",
    "session-id": "0199a0de-0000-7000-8000-000000000001",
    "x-codex-turn-metadata": json.dumps({"turn": 1}),
    "x-client-request-id": "0199a0de-0000-7000-8000-000000000002",
    "version": "0.169.0",
    "User-Agent": "codex_exec/0.169.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.169.0)",
    "Authorization": "Bearer unused",
}

APPLY_PATCH = {"type": "custom", "name": "apply_patch", "description": "Edit files with a patch.",
               "format": {"type": "grammar", "syntax": "lark",
                          "definition": 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF'}}
SHELL = {"type": "function", "name": "shell", "description": "Run a command.", "strict": False,
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                        "required": ["command"], "additionalProperties": False}}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city.", "strict": False,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
WEB_SEARCH = {"type": "web_search", "external_web_access": True}
NAMESPACE = {"type": "namespace", "name": "mcp__fs__", "description": "Files over MCP.",
             "tools": [{"type": "function", "name": "read_file", "description": "Read a file.",
                        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}]}


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def codex_body(model: str, **extra: Any) -> dict[str, Any]:
    body = {
        "model": model,
        "instructions": "You are Codex, a coding agent.",
        "input": [{"type": "message", "role": "developer",
                   "content": [{"type": "input_text", "text": "<permissions instructions>"}]},
                  user("<environment_context><cwd>/tmp</cwd></environment_context>"),
                  user("What's the weather in Paris?")],
        "tools": [SHELL, APPLY_PATCH, WEB_SEARCH, NAMESPACE, WEATHER],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a0de-0000-7000-8000-000000000001",
        "text": {"verbosity": "low"},
        "client_metadata": {"x-codex-installation-id": "abc"},
    }
    body.update(extra)
    return body


async def replay(gateway: Proc, body: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    async with aiohttp.ClientSession() as session, session.post(
        gateway.url + "/v1/responses", json=body, headers=headers or CODEX_HEADERS,
        timeout=aiohttp.ClientTimeout(total=30),
    ) as response:
        reply = Reply(response.status, Headers(response.headers), await response.read())
    return decoded(reply)


def last_upstream(fake: Proc) -> dict[str, Any]:
    return [r for r in records(fake) if r["path"] == "/v1/chat/completions"][-1]["body"]


def tool_names(body: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in body.get("tools", [])]


@pytest.mark.asyncio
async def test_codex_standard_tools(gateway: Proc, fake_openai: Proc) -> None:
    reply = await replay(gateway, codex_body("lmstudio/tool"))
    final = check_events(reply)
    assert reply.types()[-1] == "response.completed"
    completed = reply.last("response.completed")["response"]
    assert completed["usage"] is not None and completed["usage"]["total_tokens"] == 8
    assert final is not None and final.status == "completed" and final.store is False
    call = final.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id == "call_1"

    sent = last_upstream(fake_openai)
    assert tool_names(sent) == ["shell", "apply_patch", "mcp__fs__read_file", "get_weather"]
    patch = sent["tools"][1]["function"]
    assert patch["parameters"]["properties"] == {"input": {"type": "string",
                                                           "description": "The tool input, as free text."}}
    assert "*** Begin Patch" in patch["description"]  # the grammar travels in the description
    assert sent["parallel_tool_calls"] is False and sent["tool_choice"] == "auto"
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user", "user"]
    assert sent["prompt_cache_key"] == "0199a0de-0000-7000-8000-000000000001"
    for field in ("include", "client_metadata", "store", "text", "reasoning", "instructions", "input"):
        assert field not in sent
    notice = reply.headers.get("x-acore-notice", "")
    assert "web_search" in notice and "dropped" in notice
    # store:false keeps nothing
    assert get(f"{gateway.url}/v1/responses/{final.id}").status == 404


@pytest.mark.asyncio
async def test_codex_lite_additional_tools_and_configuration_update(gateway: Proc, fake_openai: Proc) -> None:
    custom_weather = {"type": "custom", "name": "get_weather", "description": "Weather, free text."}
    exec_tool = {"type": "custom", "name": "exec", "description": "Run code."}
    body = codex_body("openrouter/tool", tools=[], reasoning={"effort": "high", "context": "all_turns"})
    body.pop("instructions")
    body["input"] = [
        {"type": "additional_tools", "id": "at-1", "role": "developer",
         "tools": [{"type": "namespace", "name": "functions", "description": "Code mode.", "tools": [exec_tool]},
                   custom_weather]},
        {"type": "configuration_update", "reasoning": {"effort": "low"}},
        *body["input"],
    ]
    reply = await replay(gateway, body)
    final = check_events(reply)
    assert final is not None and final.tools == []
    call = final.output[0]
    # The chat model answered get_weather(...) and the caller sees its freeform tool's call.
    assert call.type == "custom_tool_call" and call.name == "get_weather"
    assert json.loads(call.input) == {"city": "Paris", "unit": "celsius"}
    assert "response.custom_tool_call_input.done" in reply.types()
    sent = last_upstream(fake_openai)
    assert tool_names(sent) == ["functions__exec", "get_weather"]
    assert sent["reasoning_effort"] == "low"  # the configuration_update wins over the top-level effort
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "user"]


@pytest.mark.asyncio
async def test_codex_follow_up_turn_history(gateway: Proc, fake_openai: Proc) -> None:
    body = codex_body("lmstudio/echo")
    body["input"] += [
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Check weather."}],
         "content": None, "encrypted_content": "gAAAAABencrypted"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "read_file", "namespace": "mcp__fs__",
         "arguments": '{"path":"a.txt"}'},
        {"type": "function_call_output", "id": "fco_1", "call_id": "call_1", "output": "sunny"},
        {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_2", "name": "apply_patch",
         "input": "*** Begin Patch\n*** End Patch"},
        {"type": "custom_tool_call_output", "call_id": "call_2", "output": "Done!"},
        {"type": "message", "id": "msg_2", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
        user("thanks"),
    ]
    reply = await replay(gateway, body)
    final = check_events(reply)
    assert final is not None and final.output_text == "echo: thanks"
    messages = last_upstream(fake_openai)["messages"]
    assert [m["role"] for m in messages] == ["system", "system", "user", "user", "assistant", "tool", "assistant",
                                             "tool", "assistant", "user"]
    assert messages[4]["tool_calls"][0]["function"] == {"name": "mcp__fs__read_file", "arguments": '{"path":"a.txt"}'}
    assert messages[4]["reasoning_content"] == "Check weather."
    assert messages[5] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert json.loads(messages[6]["tool_calls"][0]["function"]["arguments"]) == {
        "input": "*** Begin Patch\n*** End Patch"}
    assert messages[7] == {"role": "tool", "tool_call_id": "call_2", "content": "Done!"}


@pytest.mark.asyncio
async def test_stream_chosen_by_body_not_accept(gateway: Proc) -> None:
    streamed = await replay(gateway, {"model": "lmstudio/echo", "input": "x", "stream": True},
                            headers={"Accept": "application/json"})
    assert streamed.events and streamed.types()[-1] == "response.completed"
    plain = await replay(gateway, {"model": "lmstudio/echo", "input": "x"}, headers={"Accept": "text/event-stream"})
    assert plain.body["object"] == "response" and plain.body["status"] == "completed"


@pytest.mark.asyncio
async def test_websocket_probe_gets_426(gateway: Proc) -> None:
    async with aiohttp.ClientSession() as session, session.get(
        gateway.url + "/v1/responses",
        headers={"Upgrade": "websocket", "Connection": "Upgrade", "OpenAI-Beta": "responses_websockets=2026-02-06"},
    ) as response:
        assert response.status == 426
