#!/usr/bin/env python
"""Tool-call parsing cost on the worker (issue 17): CPU per token of ChatOutput.feed, with and without tools.

    .venv/bin/python scripts/bench/tool_parsing.py            # ~20 s
    .venv/bin/python scripts/bench/tool_parsing.py --rounds 50

One 256-token stream is replayed through ``workers.chat.ChatOutput`` exactly as an engine feeds
it (one decoded piece per call, the Delta built every time), in the same process and rounds:

- ``no tools``: the baseline (no parser runs);
- ``tools, prose``: tools offered, the answer is text (the parser's fast path on every piece);
- ``tools, call (FAMILY)``: tools offered, ~60 tokens of prose, then a tool call in the family's
  syntax with long arguments (the parser's slow path: held-back markers, JSON scanning).

Pieces are cut the way BPE tokens fall (a word with its leading space, punctuation alone, long
words in 4-character parts). Reported: median µs per token over the rounds, and each case's
added cost over the baseline (the issue's budget: ≤ 5 µs per token).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.messages import Generate
from workers.chat import ChatOutput
from workers.tool_calls import PARSERS

TOOLS = [{"type": "function", "function": {"name": "write_file", "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}}}]
PROSE = ("Sure, I can help with that. The function below reads the configuration file, checks each "
         "value against the schema, and returns the first error it finds, or None when the file is valid. ")
ARGS = {"path": "src/config/check.py", "content": "def check(path):\n    with open(path) as f:\n"
        "        data = json.load(f)\n    for key, rule in SCHEMA.items():\n        if key not in data:\n"
        "            return f'missing {key}'\n    return None\n" * 3}


def call_text(family: str) -> str:
    args = json.dumps(ARGS)
    if family == "hermes":
        return f'<tool_call>\n{{"name": "write_file", "arguments": {args}}}\n</tool_call>'
    if family == "qwen3-coder":
        params = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in ARGS.items())
        return f"<tool_call>\n<function=write_file>\n{params}</function>\n</tool_call>"
    if family == "harmony":
        return ("<|channel|>analysis<|message|>" + PROSE + "<|end|><|start|>assistant<|channel|>commentary "
                f"to=functions.write_file <|constrain|>json<|message|>{args}<|call|>")
    raise ValueError(family)


_PIECE = re.compile(r" ?\w{1,4}|\s|[^\w\s]")


def pieces(text: str, n: int = 256) -> list[str]:
    """``text`` cut into BPE-like pieces, repeated or trimmed to ``n`` pieces."""
    out = _PIECE.findall(text)
    while len(out) < n:
        out += out
    return out[:n]


def run(request: Generate, stream: list[str], family: str) -> float:
    output = ChatOutput(request, parser=PARSERS[family])
    start = time.perf_counter()
    for piece in stream:
        output.feed(piece)
    output.finish()
    return (time.perf_counter() - start) / len(stream) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=256)
    args = ap.parse_args()
    plain = Generate(request_id="b", messages=[])
    tooled = Generate(request_id="b", messages=[], tools=TOOLS)
    prose = pieces(PROSE * 20, args.tokens)
    cases = [("no tools", plain, prose, "hermes"), ("tools, prose", tooled, prose, "hermes")]
    for family in ("hermes", "qwen3-coder", "harmony"):
        head = pieces(PROSE, 60) if family != "harmony" else []
        stream = (head + pieces(call_text(family), args.tokens))[: args.tokens]
        cases.append((f"tools, call ({family})", tooled, stream, family))
    for _, request, stream, family in cases:  # warm up
        run(request, stream, family)
    samples: dict[str, list[float]] = {name: [] for name, *_ in cases}
    for _ in range(args.rounds):  # interleaved: a load spike from other processes hits every case alike
        for name, request, stream, family in cases:
            samples[name].append(run(request, stream, family))
    base = statistics.median(samples["no tools"])
    print(f"{args.tokens}-token stream, {args.rounds} rounds, median µs per token (ChatOutput.feed)")
    print(f"{'case':28} {'µs/token':>9} {'added':>8} {'ratio':>6}")
    for name in samples:
        median = statistics.median(samples[name])
        print(f"{name:28} {median:9.2f} {median - base:8.2f} {median / base:6.2f}")


if __name__ == "__main__":
    main()
