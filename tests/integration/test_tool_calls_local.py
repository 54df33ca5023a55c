"""Tool calls from local llama.cpp workers, end to end through the openai SDK.

Three tiny GGUFs whose chat templates are in three tool-call families (Hermes/Qwen, Llama 3
JSON, Mistral [TOOL_CALLS]); each worker recognises its family from the template (one is
named in the config, as ``tool_parser``). ``tool_choice: required`` makes even random weights
write a valid call (a grammar in the family's syntax), which streams as tool_calls deltas on
chat and as function-call events on Responses. Then a Codex-shaped (Responses) and an
opencode-shaped (chat) request complete a tool round trip, and ``agent_format`` rewrites calls
into the seed's text tags.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests import http
from tests.integration.responses_helpers import check_events
from tests.integration.test_responses_codex import CODEX_HEADERS, codex_body, replay, user
from tests.procs import REPO, Proc, base_env, free_port, start_gateway
from workers.tiny_models import CHATML_TEMPLATE, CHATML_TOOLS_TEMPLATE

assert "enable_thinking" not in CHATML_TOOLS_TEMPLATE  # the replace below must find its target

# Same ChatML turns (the tiny vocabulary's control tokens), tools introduced in each family's words.
LLAMA3_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nEnvironment: ipython. Call a function as <|python_tag|>"
    '{"name": function name, "parameters": dictionary of argument name and its value}\n'
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}" + CHATML_TEMPLATE
)
MISTRAL_TEMPLATE = (
    "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]\n{% endif %}"
    "{% for message in messages %}{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "[TOOL_CALLS]{{ call['function']['name'] }}[ARGS]{{ call['function']['arguments'] }}{% endfor %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen 3's way: the generation prompt opens a <think> block unless enable_thinking is false.
QWEN3_TEMPLATE = CHATML_TOOLS_TEMPLATE.replace(
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is not defined or enable_thinking %}{{ '<think>\n' }}{% endif %}{% endif %}")
FAMILIES = {"tiny-hermes": QWEN3_TEMPLATE, "tiny-llama3": LLAMA3_TEMPLATE, "tiny-mistral": MISTRAL_TEMPLATE}
PARAMETERS: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                              "required": ["city"]}
WEATHER: dict[str, Any] = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                                            "parameters": PARAMETERS}}
ASK = [{"role": "user", "content": "what is the weather in paris"}]


@pytest.fixture(scope="module")
def tools_gw(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    from workers.tiny_models import write_tiny_gguf

    directory = tmp_path_factory.mktemp("tool-ggufs")
    config = directory / "gateway.toml"
    lines = []
    for name, template in FAMILIES.items():
        path = write_tiny_gguf(directory / f"{name}.gguf", chat_template=template)
        lines.append(f'[[workers]]\nprovider = "llamacpp"\nmodel = "{path}"\nname = "{name}"\nthreads = 1\n')
        if name == "tiny-mistral":
            lines.append('tool_parser = "mistral"\n')  # the per-worker option (the template would say so too)
    config.write_text("\n".join(lines))
    proc = start_gateway(log_dir, extra_args=["--config", str(config)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = {m["id"] for m in http.get_json(proc.url + "/v1/models", timeout=5)["data"]
                     if m.get("state") == "ready"}
            if {f"llamacpp/{name}" for name in FAMILIES} <= ready:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the workers did not join:\n" + proc.log()[-3000:])
        yield proc
    finally:
        proc.stop()


def chunks_of(reply: http.Reply) -> list[dict[str, Any]]:
    assert reply.status == 200, reply.text
    return [json.loads(data) for data in reply.sse_data() if data != "[DONE]"]


def client(gw: Proc) -> Any:
    """The SDK client (typed Any: its overloads want TypedDicts, these bodies are plain dicts)."""
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_required_tool_call_streams_as_tool_call_deltas(tools_gw: Proc, name: str) -> None:
    stream = client(tools_gw).chat.completions.create(
        model=f"llamacpp/{name}", messages=ASK, tools=[WEATHER], tool_choice="required",
        temperature=0, max_tokens=200, stream=True)
    chunks = list(stream)
    fragments = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert fragments, "no tool_calls deltas"
    first = fragments[0]
    assert first.id and first.type == "function" and first.function and first.function.name == "get_weather"
    assert all(f.index == 0 for f in fragments) and all(not f.id for f in fragments[1:])
    arguments = "".join(f.function.arguments or "" for f in fragments if f.function)
    assert json.loads(arguments)["city"] in ("Paris", "Rome")
    # (how many fragments depends on how tokens were coalesced in transit: the unit tests check the pieces)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


def test_named_tool_choice_non_streaming(tools_gw: Proc) -> None:
    answer = client(tools_gw).chat.completions.create(
        model="llamacpp/tiny-llama3", messages=ASK, tools=[WEATHER], temperature=0, max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Rome")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_required_tool_call_on_responses_streams_function_call_events(tools_gw: Proc, name: str) -> None:
    events = list(client(tools_gw).responses.create(
        model=f"llamacpp/{name}", input="what is the weather in paris", stream=True, max_output_tokens=200,
        tools=[{"type": "function", "name": "get_weather", "parameters": PARAMETERS}],
        tool_choice="required", temperature=0))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    added = next(e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call")
    assert added.item.name == "get_weather" and added.item.call_id
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments)["city"] in ("Paris", "Rome")
    final = events[-1].response
    assert [item.type for item in final.output if item.type == "function_call"] == ["function_call"]


async def test_codex_shaped_tool_round_trip(tools_gw: Proc) -> None:
    """Codex's body and headers (its tools, with get_weather named in tool_choice), then its next turn
    carrying the call and the tool's output."""
    body = codex_body("llamacpp/tiny-hermes", tool_choice={"type": "function", "name": "get_weather"},
                      max_output_tokens=200, temperature=0)
    body["tools"][-1] = {**body["tools"][-1], "parameters": PARAMETERS}
    first = await replay(tools_gw, body)
    response = check_events(first)
    assert response is not None and response.status == "completed", first.events[-1]
    call = next(item for item in response.output if item.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments)["city"] in ("Paris", "Rome")
    follow = codex_body("llamacpp/tiny-hermes", max_output_tokens=16, temperature=0, tools=body["tools"])
    follow["input"] += [{"type": "function_call", "name": "get_weather", "arguments": call.arguments,
                         "call_id": call.call_id},
                        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
                        user("thanks")]
    second = await replay(tools_gw, follow, CODEX_HEADERS)
    last_name, last = second.events[-1]
    assert last_name in ("response.completed", "response.incomplete") and last["response"]["usage"]["input_tokens"]
    # the call and its output are in the second turn's prompt
    assert response.usage is not None and last["response"]["usage"]["input_tokens"] > response.usage.input_tokens


def test_opencode_shaped_tool_round_trip(tools_gw: Proc) -> None:
    """@ai-sdk/openai-compatible's chat body: streamed with usage, the assistant's call echoed with
    content "" and compact arguments, the tool result as text parts."""
    headers = {"x-session-id": "ses_01", "x-session-affinity": "ses_01", "User-Agent": "opencode/0.15.0"}
    turn = http.post(tools_gw.url + "/v1/chat/completions", {
        "model": "llamacpp/tiny-mistral", "messages": [{"role": "system", "content": "You are opencode."}, *ASK],
        "tools": [WEATHER], "tool_choice": "required", "stream": True, "stream_options": {"include_usage": True},
        "temperature": 0, "max_tokens": 200}, headers=headers, timeout=60)
    chunks = chunks_of(turn)
    fragments = [f for c in chunks for ch in c["choices"] for f in ch["delta"].get("tool_calls") or ()]
    call_id, name = fragments[0]["id"], fragments[0]["function"]["name"]
    arguments = json.dumps(json.loads("".join(f["function"].get("arguments") or "" for f in fragments)),
                           separators=(",", ":"))
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    follow = http.post(tools_gw.url + "/v1/chat/completions", {
        "model": "llamacpp/tiny-mistral", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "You are opencode."}, *ASK,
                     {"role": "assistant", "content": "", "tool_calls": [
                         {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
                     {"role": "tool", "tool_call_id": call_id, "content": [{"type": "text", "text": "sunny"}]}],
        "tools": [WEATHER], "temperature": 0, "max_tokens": 16}, headers=headers, timeout=60)
    chunks = chunks_of(follow)
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert finishes and finishes[-1] in ("stop", "length", "tool_calls") and chunks[-1]["usage"]["prompt_tokens"]


def test_agent_format_rewrites_calls_into_the_seeds_tags(tools_gw: Proc) -> None:
    body: dict[str, Any] = {"model": "llamacpp/tiny-hermes", "messages": ASK, "tools": [WEATHER],
                            "tool_choice": "required", "temperature": 0, "max_tokens": 200, "agent_format": "qwen3"}
    answer = http.post(tools_gw.url + "/v1/chat/completions", body, timeout=60).body
    message = answer["choices"][0]["message"]
    assert message["content"].startswith("\n\n<|tool_call|>\n{\n  \"name\": \"get_weather\"")
    assert message["content"].endswith("\n</|tool_call|>") and message["tool_calls"]  # both, as the seed
    chunks = chunks_of(http.post(tools_gw.url + "/v1/chat/completions",
                                 {**body, "stream": True, "agent_format": "[C],[/C]"}, timeout=60))
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text.startswith("\n\n[C]\n{") and text.endswith("}\n[/C]")
    assert not any(ch["delta"].get("tool_calls") for c in chunks for ch in c["choices"])
    bad = http.post(tools_gw.url + "/v1/chat/completions", {**body, "agent_format": "yaml"})
    assert bad.status == 400 and bad.body["error"]["param"] == "agent_format"


def test_thinking_opened_by_the_template_is_reasoning_and_off_closes_it(tools_gw: Proc) -> None:
    """The Qwen 3-style template opens <think> in the prompt: the random answer never closes it, so all of
    it is reasoning_content; thinking "off" sets enable_thinking false, and the answer is content."""
    sdk = client(tools_gw)
    on = sdk.chat.completions.create(model="llamacpp/tiny-hermes", messages=ASK, max_tokens=8, temperature=0)
    message = on.choices[0].message
    assert not message.content and message.model_extra["reasoning_content"]
    off = sdk.chat.completions.create(model="llamacpp/tiny-hermes", messages=ASK, max_tokens=8, temperature=0,
                                      extra_body={"thinking": "off"})
    assert off.choices[0].message.content and not (off.choices[0].message.model_extra or {}).get("reasoning_content")
    events = list(sdk.responses.create(model="llamacpp/tiny-hermes", input="hello", max_output_tokens=8,
                                       temperature=0, stream=True))
    assert "response.reasoning_text.delta" in [e.type for e in events] and events[-1].response.usage


def test_gateway_refuses_to_execute_tools(tmp_path: Path) -> None:
    env = base_env({"ABSTRACTCORE_DEFAULT_EXECUTE_TOOLS": "true"})
    done = subprocess.run([sys.executable, "-m", "gateway", "--port", str(free_port()), "--no-default-embeddings"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "never executes tools" in done.stderr
