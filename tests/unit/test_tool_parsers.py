"""workers/tool_calls: every family's documented output, fed whole, one character at a time and
split at every position; edge cases; the registry; the grammars; ChatOutput's deltas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from llama_cpp import LlamaGrammar

from protocol.messages import FinishReason, Generate, SamplingParams
from workers.backend import Delta, WorkerError
from workers.chat import ChatOutput, finish_reason, merged_tool_calls, template_options
from workers.llamacpp import LlamaCppBackend
from workers.tiny_models import write_tiny_gguf
from workers.tool_calls import PARSERS, choose_parser, detect_family, parser_named
from workers.tool_calls.grammar import CALL_SYNTAX, forced_tools, tool_call_grammar
from workers.tool_calls.harmony import HarmonyParser

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
Call = tuple[str, Any]  # (name, arguments decoded)


class Recorder:
    """A Sink that keeps every event in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def content(self, text: str) -> None:
        self.events.append(("content", text))

    def reasoning(self, text: str) -> None:
        self.events.append(("reasoning", text))

    def call_start(self, index: int, call_id: str, name: str) -> None:
        self.events.append(("start", index, call_id, name))

    def call_args(self, index: int, fragment: str) -> None:
        self.events.append(("args", index, fragment))

    def call_end(self, index: int) -> None:
        self.events.append(("end", index))

    def result(self) -> tuple[str, str, list[tuple[str, str]]]:
        content = "".join(e[1] for e in self.events if e[0] == "content")
        reasoning = "".join(e[1] for e in self.events if e[0] == "reasoning")
        calls: dict[int, list[str]] = {}
        for event in self.events:
            if event[0] == "start":
                assert event[1] not in calls and event[2].startswith("call_")
                calls[event[1]] = [event[3], ""]
            elif event[0] == "args":
                assert event[1] in calls, "arguments before the call's start"
                calls[event[1]][1] += event[2]
        return content, reasoning, [(name, args) for name, args in (calls[i] for i in sorted(calls))]


def parse(family: str, pieces: list[str], tools: list[dict[str, Any]] = TOOLS) -> tuple[str, str, list[Call]]:
    recorder = Recorder()
    parser = PARSERS[family](recorder, tools)
    for piece in pieces:
        parser.feed(piece)
    parser.finish()
    content, reasoning, calls = recorder.result()
    decoded = []
    for name, args in calls:
        try:
            decoded.append((name, json.loads(args)))
        except ValueError:
            decoded.append((name, args))  # a cut-off call keeps its partial arguments text
    return content, reasoning, decoded


def every_split(family: str, text: str) -> tuple[str, str, list[Call]]:
    """The result for ``text`` whole; asserted equal fed one character at a time and split anywhere."""
    whole = parse(family, [text])
    assert parse(family, list(text)) == whole
    for i in range(1, len(text)):
        assert parse(family, [text[:i], text[i:]]) == whole, f"split at {i}: {text[:i]!r} | {text[i:]!r}"
    return whole


PARIS = ("get_weather", {"city": "Paris"})
# (family, model output in the family's documented format, content, reasoning, calls)
DOCUMENTED: list[tuple[str, str, str, str, list[Call]]] = [
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "", "", [PARIS]),
    ("hermes", 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
               '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\nDone.',
     "Checking.\n\nDone.", "", [PARIS, ("get_time", {})]),
    ("hermes", '{"name": "get_weather", "arguments": {"city": "Paris"}}', "", "", [PARIS]),
    ("hermes", '<tool_call>{"arguments": {"city": "Paris"}, "name": "get_weather"}</tool_call>', "", "", [PARIS]),
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>', "", "",
     [PARIS]),
    ("qwen3-coder", "Let me look.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
     "Let me look.\n", "", [("get_weather", {"city": "Paris", "days": 3})]),
    ("qwen3-coder", "<tool_call>\n<function=get_time>\n</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n"
                    "<parameter=city>\nNew\nYork\n</parameter>\n</function>\n</tool_call>", "", "",
     [("get_time", {}), ("get_weather", {"city": "New\nYork"})]),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}', "", "", [PARIS]),
    ("llama3", '<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}', "", "",
     [PARIS]),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {}}',
     "", "", [PARIS, ("get_time", {})]),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123def"}, '
                '{"name": "get_time", "arguments": {}, "id": "zyx987wvu"}]', "", "", [PARIS, ("get_time", {})]),
    ("mistral", 'Sure. [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}', "Sure. ", "",
     [PARIS, ("get_time", {})]),
    ("mistral", '[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}', "", "", [PARIS]),
    ("harmony", '<|channel|>analysis<|message|>User wants weather.<|end|><|start|>assistant<|channel|>commentary '
                'to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>',
     "", "User wants weather.", [PARIS]),
    ("harmony", '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}',
     "", "", [PARIS]),
    ("harmony", "<|channel|>analysis<|message|>Simple.<|end|><|start|>assistant<|channel|>final<|message|>"
                "Hello there!<|return|>", "Hello there!", "Simple.", []),
    ("deepseek", 'Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n'
                 '```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>'
                 'get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
     "Let me check.", "", [PARIS, ("get_time", {})]),
    ("deepseek", '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}'
                 '<｜tool▁call▁end｜><｜tool▁calls▁end｜>', "", "", [PARIS]),
    ("gemma", 'I will check.\n```tool_code\nget_weather(city="Paris")\n```\nOne moment.', "I will check.\n\nOne moment.",
     "", [PARIS]),
    ("gemma", '```tool_code\n{"name": "get_weather", "arguments": {"city": "Paris"}}\nget_time()\n```', "", "",
     [PARIS, ("get_time", {})]),
]


@pytest.mark.parametrize(("family", "text", "content", "reasoning", "calls"), DOCUMENTED,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(DOCUMENTED)])
def test_documented_formats_at_every_token_boundary(family: str, text: str, content: str, reasoning: str,
                                                    calls: list[Call]) -> None:
    assert every_split(family, text) == (content, reasoning, calls)


# ---------------------------------------------------------------- edge cases


def test_end_marker_inside_a_json_string_is_argument_text() -> None:
    text = '<tool_call>{"name": "echo", "arguments": {"text": "a </tool_call> b \\" }"}}</tool_call>after'
    assert every_split("hermes", text) == ("after", "", [("echo", {"text": 'a </tool_call> b " }'})])


def test_unicode_survives_in_content_and_arguments() -> None:
    text = 'Zürich → ✓ <tool_call>{"name": "get_weather", "arguments": {"city": "Zürich 東京 ✓"}}</tool_call>'
    assert every_split("hermes", text) == ("Zürich → ✓ ", "", [("get_weather", {"city": "Zürich 東京 ✓"})])
    text = "<tool_call>\n<function=get_weather>\n<parameter=city>\nSão Paulo 🌧\n</parameter>\n</function>\n</tool_call>"
    assert every_split("qwen3-coder", text)[2] == [("get_weather", {"city": "São Paulo 🌧"})]


@pytest.mark.parametrize(("family", "text"), [
    ("hermes", "<tool_call>not json at all</tool_call> fine"),
    ("hermes", '<tool_call>{"answer": 42}</tool_call>'),
    ("hermes", '{"answer": 42} is the JSON you asked for'),
    ("hermes", '<tool_call>{"name": 7}</tool_call>'),
    ("qwen3-coder", "<tool_call>\njust words\n</tool_call>"),
    ("llama3", '{"result": [1, 2]}'),
    ("llama3", '<|python_tag|>brave_search.call(query="x")'),
    ("mistral", "[TOOL_CALLS] are what I would use here, but no."),
    ("gemma", "```tool_code\nprint(\n```"),
    ("deepseek", "<｜tool▁calls▁begin｜>hello"),
])
def test_malformed_calls_are_text(family: str, text: str) -> None:
    assert every_split(family, text) == (text, "", [])


def test_text_that_only_looks_like_a_marker_is_released_at_once() -> None:
    recorder = Recorder()
    parser = PARSERS["hermes"](recorder, TOOLS)
    parser.feed("Use a <tool")
    assert recorder.events == [("content", "Use a ")]  # "<tool" may begin <tool_call>: held
    parser.feed("box> here")
    assert recorder.events[-1] == ("content", "<toolbox> here")  # not a marker after all: out at once


def test_a_call_streams_id_and_name_first_then_argument_fragments() -> None:
    recorder = Recorder()
    parser = PARSERS["hermes"](recorder, TOOLS)
    for piece in ['<tool_call>{"name": "get_', 'weather", "arguments": {"ci', 'ty": "Pa', 'ris"}}</tool_call>']:
        parser.feed(piece)
    parser.finish()
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "start" and recorder.events[0][3] == "get_weather"
    assert kinds.count("args") >= 3 and kinds[-1] == "end"  # the arguments arrived in pieces, and so went out
    assert "".join(e[2] for e in recorder.events if e[0] == "args") == '{"city": "Paris"}'


@pytest.mark.parametrize(("family", "cut", "calls"), [
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": {"city": "Par', [("get_weather", '{"city": "Par')]),
    ("hermes", '<tool_call>{"name": "get_weather", "argu', [("get_weather", "")]),
    ("qwen3-coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=da",
     [("get_weather", {"city": "Paris"})]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Pa', [("get_weather", '{"city": "Pa')]),
    ("harmony", "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"ci",
     [("get_weather", '{"ci')]),
])
def test_a_call_cut_by_max_tokens_is_reported_not_lost(family: str, cut: str, calls: list[Call]) -> None:
    assert every_split(family, cut) == ("", "", calls)


def test_truncated_call_finishes_length() -> None:
    assert finish_reason(FinishReason.LENGTH, True) == FinishReason.LENGTH
    assert finish_reason(FinishReason.STOP, True) == FinishReason.TOOL_CALLS
    assert finish_reason(FinishReason.STOP, False) == FinishReason.STOP


def test_an_unterminated_prefix_at_the_end_is_text() -> None:
    assert every_split("hermes", "a b <tool_ca") == ("a b <tool_ca", "", [])


# ---------------------------------------------------------------- registry

TEMPLATES = {
    "hermes": "{% for tool in tools %}{{ tool | tojson }}{% endfor %} <tool_call>{...}</tool_call>",
    "qwen3-coder": "<tool_call>\n<function=example>\n<parameter=x>\nvalue\n</parameter>\n</function>",
    "llama3": "<|start_header_id|>ipython<|end_header_id|> {{ '<|python_tag|>' }}",
    "mistral": "[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS] [TOOL_CALLS]{{ name }}[ARGS]",
    "harmony": "<|start|>assistant<|channel|>analysis<|message|>",
    "deepseek": "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>",
    "gemma": "wrap calls in ```tool_code``` blocks",
}


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_parser_is_chosen_from_the_chat_template(family: str) -> None:
    assert detect_family(TEMPLATES[family]) == family
    assert choose_parser(None, TEMPLATES[family]).family == family
    assert choose_parser("auto", TEMPLATES[family]).family == family


def test_tool_parser_option_overrides_the_template() -> None:
    assert choose_parser("mistral", TEMPLATES["hermes"]).family == "mistral"
    assert parser_named("gpt-oss") is HarmonyParser and parser_named("Qwen3").family == "hermes"
    assert detect_family(None) == detect_family("{{ messages }}") == "hermes"
    with pytest.raises(ValueError, match="unknown tool parser"):
        parser_named("nope")


# ---------------------------------------------------------------- grammars


@pytest.mark.parametrize("family", sorted(CALL_SYNTAX))
def test_every_family_has_a_grammar_llama_cpp_accepts(family: str) -> None:
    forced = forced_tools(TOOLS, "required")
    assert forced is not None and [name for name, _ in forced] == ["get_weather", "get_time"]
    LlamaGrammar.from_string(tool_call_grammar(family, forced), verbose=False)
    LlamaGrammar.from_string(tool_call_grammar(family, forced, close_reasoning=True), verbose=False)


def test_tool_choice_forms() -> None:
    assert forced_tools(TOOLS, "auto") is None and forced_tools(TOOLS, "none") is None and forced_tools([], "required") is None
    named = forced_tools(TOOLS, {"type": "function", "function": {"name": "get_time"}})
    assert named == [("get_time", {"type": "object"})]
    assert forced_tools(TOOLS, {"type": "function", "name": "get_time"}) == named  # the Responses form
    with pytest.raises(WorkerError, match="not in tools"):
        forced_tools(TOOLS, {"type": "function", "function": {"name": "missing"}})
    with pytest.raises(WorkerError, match="tool_choice"):
        forced_tools(TOOLS, "sometimes")


# ---------------------------------------------------------------- ChatOutput and the engine


def generate(**kw: Any) -> Generate:
    params = SamplingParams(**{k: v for k, v in kw.items() if k in SamplingParams.__struct_fields__})
    rest = {k: v for k, v in kw.items() if k not in SamplingParams.__struct_fields__}
    return Generate(request_id="r", messages=[{"role": "user", "content": "weather in paris"}], params=params, **rest)


def test_chat_output_streams_content_then_call_deltas() -> None:
    output = ChatOutput(generate(tools=TOOLS), parser=PARSERS["qwen3-coder"])
    deltas = [output.feed(p) for p in ["Sure", ". <tool_", "call>\n<function=get_weather>\n",
                                        "<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"]]
    last, called = output.finish()
    assert deltas[0].text == "Sure" and deltas[1].text == ". "
    assert deltas[2].tool_calls[0]["function"] == {"name": "get_weather", "arguments": ""} and deltas[2].tool_calls[0]["id"]
    assert deltas[3].tool_calls == [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]
    assert called and last is None


def test_harmony_reasoning_is_separated_even_without_tools() -> None:
    output = ChatOutput(generate(), parser=HarmonyParser)
    text = "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>Hi"
    deltas = [output.feed(c) for c in text]
    last, called = output.finish()
    deltas += [last] if last else []
    assert "".join(d.reasoning for d in deltas) == "think" and "".join(d.text for d in deltas) == "Hi"
    assert not called


def test_tool_choice_none_leaves_calls_as_text() -> None:
    call = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'
    output = ChatOutput(generate(tools=TOOLS, tool_choice="none"))
    assert output.feed(call).text == call and output.finish() == (None, False)


def test_thinking_maps_to_the_template() -> None:
    assert template_options(generate()) == {}
    assert template_options(generate(thinking="off"))["enable_thinking"] is False
    assert template_options(generate(thinking="high")) == {"enable_thinking": True, "reasoning_effort": "high"}
    assert template_options(generate(thinking="on"))["reasoning_effort"] == "medium"


ENUM_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}, "required": ["city"]}}}]


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral", "qwen3-coder"])
def test_tool_choice_required_makes_a_random_model_call(tmp_path: Path, family: str) -> None:
    """The grammar forces the call in the family's syntax; its parser reads it back as a call."""
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    backend = LlamaCppBackend(str(path), "tiny", {"threads": 1, "tool_parser": family})
    backend.load()
    try:
        deltas: list[Delta] = []
        result = backend.generate(generate(max_tokens=200, temperature=0, tools=ENUM_TOOLS, tool_choice="required"),
                                  deltas.append, lambda: False)
        calls = merged_tool_calls([c for d in deltas for c in d.tool_calls])
        assert result.finish_reason == FinishReason.TOOL_CALLS
        assert [c["function"]["name"] for c in calls] == ["get_weather"]
        assert json.loads(calls[0]["function"]["arguments"])["city"] in ("Paris", "Rome")
        assert "".join(d.text for d in deltas).strip() == ""
    finally:
        backend.unload()


# ---------------------------------------------------------------- agent_format (gateway side)


def test_agent_format_names_and_tags() -> None:
    from gateway.pipeline.agent_format import Tags, parse_format

    assert parse_format("openai") is None and parse_format("Codex") is None and parse_format("passthrough") is None
    assert parse_format("qwen3") == Tags("<|tool_call|>", "</|tool_call|>")
    assert parse_format("llama3") == Tags("<function_call>", "</function_call>")
    assert parse_format("xml") == Tags("<tool_call>", "</tool_call>")
    assert parse_format("gemma") == Tags("```tool_code", "```")
    assert parse_format(" [CALL] , [/CALL] ") == Tags("[CALL]", "[/CALL]")
    with pytest.raises(ValueError, match="agent_format must be one of"):
        parse_format("yaml")
    # the seed's text: json.dumps({"name", "arguments"}, indent=2) between the tags, after a blank line
    assert Tags("<a>", "</a>").render("f", '{"x": 1}') == '\n\n<a>\n{\n  "name": "f",\n  "arguments": {\n    "x": 1\n  }\n}\n</a>'
    assert '"value": "not json"' in Tags("<a>", "</a>").render("f", "not json")


def test_execute_tools_is_refused_at_start() -> None:
    from gateway.config import ConfigError
    from gateway.pipeline.agent_format import refuse_tool_execution

    refuse_tool_execution({"ABSTRACTCORE_DEFAULT_EXECUTE_TOOLS": "false", "ABSTRACTCORE_DEFAULT_TOOL_CALL_TAGS": "xml"})
    with pytest.raises(ConfigError, match="never executes tools"):
        refuse_tool_execution({"ABSTRACTCORE_DEFAULT_EXECUTE_TOOLS": "true"})
    with pytest.raises(ConfigError, match="ABSTRACTCORE_DEFAULT_TOOL_CALL_TAGS"):
        refuse_tool_execution({"ABSTRACTCORE_DEFAULT_TOOL_CALL_TAGS": "yaml"})


async def test_agent_format_rewrites_a_stream() -> None:
    from gateway.pipeline.agent_format import Tags, rewrite_stream

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    async def upstream() -> Any:
        yield chunk({"role": "assistant", "content": ""})
        yield chunk({"content": "Let me see."})
        yield chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                     "function": {"name": "f", "arguments": '{"a"'}}]})
        yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]})
        yield chunk({"tool_calls": [{"index": 1, "id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]})
        yield chunk({}, "tool_calls")
        yield {"choices": [], "usage": {"prompt_tokens": 1}}

    out = [c async for c in rewrite_stream(upstream(), Tags("<t>", "</t>"))]
    deltas = [c["choices"][0]["delta"] for c in out if c["choices"]]
    assert not any("tool_calls" in d for d in deltas)
    text = "".join(d.get("content") or "" for d in deltas)
    assert text == 'Let me see.\n\n<t>\n{\n  "name": "f",\n  "arguments": {\n    "a": 1\n  }\n}\n</t>' \
                   '\n\n<t>\n{\n  "name": "g",\n  "arguments": {}\n}\n</t>'
    assert out[-2]["choices"][0]["finish_reason"] == "tool_calls" and out[-1]["usage"]


@pytest.mark.parametrize("family", ["hermes", "qwen3-coder"])
def test_tool_choice_required_on_mlx_uses_a_logits_processor(tmp_path_factory: pytest.TempPathFactory,
                                                             family: str) -> None:
    """MLX: the same grammar in Lark, enforced by llguidance's token mask; the call parses back."""
    from workers.mlx_backend import MLXBackend
    from workers.mlx_tiny import write_tiny_mlx_model

    directory = write_tiny_mlx_model(tmp_path_factory.mktemp("mlx-tools") / "tiny")
    backend = MLXBackend(str(directory), "tiny", {"tool_parser": family})
    backend.load()
    try:
        deltas: list[Delta] = []
        named = {"type": "function", "function": {"name": "get_weather"}}
        result = backend.generate(generate(max_tokens=120, temperature=0, tools=ENUM_TOOLS, tool_choice=named),
                                  deltas.append, lambda: False)
        calls = merged_tool_calls([c for d in deltas for c in d.tool_calls])
        assert result.finish_reason == FinishReason.TOOL_CALLS, "".join(d.text for d in deltas)
        assert [c["function"]["name"] for c in calls] == ["get_weather"]
        assert json.loads(calls[0]["function"]["arguments"])["city"] in ("Paris", "Rome")
    finally:
        backend.unload()


def test_a_forced_call_cut_by_max_tokens_finishes_length_with_the_partial_call(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    backend = LlamaCppBackend(str(path), "tiny", {"threads": 1})
    backend.load()
    try:
        deltas: list[Delta] = []
        # the tiny vocabulary spells the markup about a character per token: 50 tokens end inside the arguments
        result = backend.generate(generate(max_tokens=50, temperature=0, tools=ENUM_TOOLS, tool_choice="required"),
                                  deltas.append, lambda: False)
        calls = merged_tool_calls([c for d in deltas for c in d.tool_calls])
        assert result.finish_reason == FinishReason.LENGTH
        assert [c["function"]["name"] for c in calls] == ["get_weather"]
        with pytest.raises(ValueError):
            json.loads(calls[0]["function"]["arguments"])  # partial, as far as the model got
    finally:
        backend.unload()


def test_agent_format_per_request_over_the_server_default() -> None:
    from gateway.errors import GatewayError
    from gateway.pipeline.agent_format import Tags, tags_for

    env = {"ABSTRACTCORE_DEFAULT_TOOL_CALL_TAGS": "llama3"}
    assert tags_for(None, env) == Tags("<function_call>", "</function_call>")
    assert tags_for("openai", env) is None and tags_for(None, {}) is None
    assert tags_for("xml", {}) == Tags("<tool_call>", "</tool_call>")
    with pytest.raises(GatewayError) as error:
        tags_for("yaml", env)
    assert error.value.status == 400
