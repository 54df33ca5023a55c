"""workers/chat.py: the chat semantics both engines share, and the engines honouring them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocol.messages import Generate, SamplingParams
from workers.backend import Delta
from workers.chat import ChatOutput, ReasoningSplitter, opens_reasoning, resolve_sampling, tools_active
from workers.llamacpp import LlamaCppBackend, model_sampling_defaults
from workers.tiny_models import write_tiny_gguf

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def generate(**kw: Any) -> Generate:
    params = SamplingParams(**{k: v for k, v in kw.items() if k in SamplingParams.__struct_fields__})
    rest = {k: v for k, v in kw.items() if k not in SamplingParams.__struct_fields__}
    return Generate(request_id="r", messages=[{"role": "user", "content": "x"}], params=params, **rest)


def run(output: ChatOutput, pieces: list[str]) -> tuple[str, str, list[dict[str, Any]], bool]:
    deltas: list[Delta] = [output.feed(piece) for piece in pieces]
    last, tool_call = output.finish()
    if last is not None:
        deltas.append(last)
    return ("".join(d.text for d in deltas), "".join(d.reasoning for d in deltas),
            [c for d in deltas for c in d.tool_calls], tool_call)


# ---------------------------------------------------------------- sampling defaults


def test_openai_defaults_when_nothing_is_said() -> None:
    sampling = resolve_sampling(SamplingParams())
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p, sampling.repeat_penalty) == \
        (1.0, 1.0, 0, 0.0, 1.0)
    assert not sampling.greedy


def test_model_defaults_then_request_values() -> None:
    model = {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    sampling = resolve_sampling(SamplingParams(), model)
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p) == (0.6, 0.95, 20, 0.0)
    sampling = resolve_sampling(SamplingParams(temperature=0.0, top_k=5), model)
    assert sampling.greedy and sampling.top_k == 5 and sampling.top_p == 0.95


def test_gguf_sampling_metadata_is_read() -> None:
    metadata = {"general.sampling.temp": "0.7", "general.sampling.top_k": "40", "general.sampling.top_p": "bad",
                "general.name": "x"}
    assert model_sampling_defaults(metadata) == {"temperature": 0.7, "top_k": 40.0}


def test_llamacpp_follows_the_models_own_sampling_config(tmp_path: Path) -> None:
    """A GGUF that says temperature 0 samples greedily when the request names no temperature."""
    path = write_tiny_gguf(tmp_path / "greedy.gguf", sampling={"temp": 0.0})
    backend = LlamaCppBackend(str(path), "greedy", {"threads": 1})
    backend.load()
    try:
        def text(**kw: Any) -> str:
            out: list[Delta] = []
            backend.generate(generate(max_tokens=12, **kw), out.append, lambda: False)
            return "".join(d.text for d in out)

        assert text() == text() == text(temperature=0.0)  # deterministic: the model's default applies
        assert backend._model_defaults == {"temperature": 0.0}
    finally:
        backend.unload()


# ---------------------------------------------------------------- tool_choice and tool calls


def test_tool_call_is_parsed_when_tools_are_active() -> None:
    text, _, calls, tool_call = run(ChatOutput(generate(tools=TOOLS)), [CALL[:9], CALL[9:30], CALL[30:]])
    assert tool_call and text == ""
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_tool_choice_none_means_text() -> None:
    request = generate(tools=TOOLS, tool_choice="none")
    assert not tools_active(request)
    text, _, calls, tool_call = run(ChatOutput(request), [CALL])
    assert text == CALL and not calls and not tool_call


def test_prose_is_released_at_once() -> None:
    output = ChatOutput(generate(tools=TOOLS))
    assert output.feed("Hello").text == "Hello"  # not a tool call: streamed, not held back


# ---------------------------------------------------------------- stop strings and reasoning


def test_stop_string_split_across_tokens_never_leaks() -> None:
    output = ChatOutput(generate(stop=["END"]))
    pieces = [output.feed(p).text for p in ("one E", "N", "D two")]
    assert "".join(pieces) == "one " and output.stopped


def test_think_block_at_the_start_is_reasoning() -> None:
    text, reasoning, _, _ = run(ChatOutput(generate()), ["<thi", "nk>plan ", "a b</th", "ink>\n\nanswer"])
    assert (reasoning, text) == ("plan a b", "answer")


def test_think_tag_later_in_the_answer_is_text() -> None:
    text, reasoning, _, _ = run(ChatOutput(generate()), ["I wrote <think> in my answer"])
    assert (reasoning, text) == ("", "I wrote <think> in my answer")


def test_prompt_that_opens_the_block() -> None:
    assert opens_reasoning("<|im_start|>assistant\n<think>\n")
    splitter = ReasoningSplitter(inside=True)
    assert splitter.feed("thinking</think>done") == ("thinking", "done")


def test_unclosed_block_is_all_reasoning_and_tools_come_after() -> None:
    text, reasoning, calls, tool_call = run(ChatOutput(generate(tools=TOOLS)), ["<think>hmm</think>", CALL])
    assert reasoning == "hmm" and tool_call and text == "" and len(calls) == 1
    _, reasoning, _, _ = run(ChatOutput(generate()), ["<think>never closed"])
    assert reasoning == "never closed"


def test_mlx_generation_config_defaults(tmp_path: Path) -> None:
    from workers.mlx_backend import MLXBackend

    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.9, "top_k": 20,
                                                                  "repetition_penalty": 1.1, "do_sample": True}))
    assert MLXBackend._generation_defaults(tmp_path) == {"temperature": 0.6, "top_p": 0.9, "top_k": 20.0,
                                                         "repeat_penalty": 1.1}
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.6}))
    assert MLXBackend._generation_defaults(tmp_path) == {"temperature": 0.0}


@pytest.mark.parametrize("choice", ["none", "auto"])
def test_mlx_honours_tool_choice(tmp_path_factory: pytest.TempPathFactory, choice: str) -> None:
    """The MLX engine decides through the shared semantics: output that looks like the start of a tool
    call ("{...") is held back while tools are active (until it cannot be one), and streams at once under
    tool_choice none."""
    from transformers import AutoTokenizer

    from workers.mlx_backend import MLXBackend
    from workers.mlx_tiny import write_tiny_mlx_model

    directory = write_tiny_mlx_model(tmp_path_factory.mktemp("mlx") / "tiny")
    brace = AutoTokenizer.from_pretrained(str(directory)).convert_tokens_to_ids("{")
    backend = MLXBackend(str(directory), "tiny", {})
    backend.load()
    try:
        out: list[Delta] = []
        request = generate(max_tokens=5, temperature=0.0, logit_bias={str(brace): 100.0}, tools=TOOLS,
                           tool_choice=choice)
        result = backend.generate(request, out.append, lambda: False)
        texts = [d.text for d in out]
        assert "".join(texts) == "{" * 5 and result.finish_reason == "length"
        if choice == "none":
            assert texts[:5] == ["{"] * 5  # streamed token by token
        else:
            # held only until judged: "{{" cannot begin a call object, so it is text at once
            assert texts[:3] == ["", "{{", "{"]
    finally:
        backend.unload()
