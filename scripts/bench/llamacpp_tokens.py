#!/usr/bin/env python
"""Tokens/s and TTFT: llama-cpp-python in-process vs acore's backend loop (vs a running gateway), and
prompt-cache TTFT cached vs uncached on a ~2,000-token shared prefix.

    .venv/bin/python scripts/bench/llamacpp_tokens.py [--runs 5] [--tokens 256] [--gateway http://127.0.0.1:8000]

Same model (the 4-layer hidden-256 tiny GGUF with zeroed special rows, so every run reaches
max_tokens), same prompt, greedy, n_threads=1 (two threads on a shared 2-core box are unsteady),
runs interleaved, medians reported as a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from protocol.messages import CacheOp, Generate, SamplingParams  # noqa: E402
from workers.llamacpp import LlamaCppBackend  # noqa: E402
from workers.tiny_models import BENCH, write_tiny_gguf  # noqa: E402

MESSAGES = [{"role": "system", "content": "you are a helpful assistant"},
            {"role": "user", "content": "write a short story about the weather in the city"}]

Sample = tuple[float, float, int]  # (ttft s, decode tok/s, tokens)


def timed_stream(chunks: Callable[[Callable[[int], None]], None]) -> Sample:
    """Run a stream; the callback gets the number of tokens each chunk carries."""
    start = time.perf_counter()
    first = last = 0.0
    n = 0

    def on_chunk(k: int) -> None:
        nonlocal first, last, n
        now = time.perf_counter()
        if n == 0:
            first = now
        last = now
        n += k

    chunks(on_chunk)
    decode = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    return first - start, decode, n


def bench_llama_cpp_python(llm, tokens: int) -> Sample:
    def go(cb: Callable[[int], None]) -> None:
        for chunk in llm.create_chat_completion(messages=MESSAGES, max_tokens=tokens, temperature=0.0,
                                                repeat_penalty=1.0, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                cb(1)
    return timed_stream(go)


def bench_backend(backend: LlamaCppBackend, tokens: int) -> Sample:
    req = Generate(request_id="b", messages=MESSAGES, params=SamplingParams(max_tokens=tokens, temperature=0.0))

    def go(cb: Callable[[int], None]) -> None:
        backend.generate(req, lambda d: cb(d.n_tokens) if d.n_tokens else None, lambda: False)
    return timed_stream(go)


def bench_gateway(client, model: str, tokens: int) -> Sample:
    """Through the gateway: chunks may carry several tokens (coalesced), so count by the usage chunk."""
    t0 = time.perf_counter()
    first = last = 0.0
    usage_tokens = chunks = 0
    stream = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage_tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            first = first or now
            last = now
            chunks += 1
    n = usage_tokens or chunks
    # the first chunk may already hold several tokens; count only those after it, conservatively one
    decode = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    return first - t0, decode, n


def prefix_ttft(backend: LlamaCppBackend, runs: int, prefix_words: int) -> tuple[float, float, int, int]:
    system = {"role": "system", "content": " ".join(["the weather in the city is good today"] * prefix_words)}

    def ttft(question: str) -> tuple[float, int, int]:
        req = Generate(request_id="p", messages=[system, {"role": "user", "content": question}],
                       params=SamplingParams(max_tokens=1, temperature=0.0))
        t0 = time.perf_counter()
        first: list[float] = []
        res = backend.generate(req, lambda d: first.append(time.perf_counter()) if not first else None, lambda: False)
        return (first[0] if first else time.perf_counter()) - t0, res.usage.prompt_tokens, res.usage.cached_tokens

    cold, warm = [], []
    n_prompt = n_cached = 0
    for i in range(runs):
        backend.cache_op(CacheOp(request_id="c", op="clear"))
        backend.reset_context()
        t, n_prompt, c0 = ttft(f"question number {i}")
        assert c0 == 0
        cold.append(t)
        backend.generate(Generate(request_id="x", messages=[{"role": "user", "content": "hello"}],
                                  params=SamplingParams(max_tokens=4, temperature=0.0)),
                         lambda d: None, lambda: False)  # an unrelated request in between
        t, _, n_cached = ttft(f"another question {i}")
        warm.append(t)
    return statistics.median(cold), statistics.median(warm), n_prompt, n_cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / ".cache/models/tiny-bench.gguf"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prefix-words", type=int, default=180, help="system prompt size (180 → ~2,000 tokens)")
    ap.add_argument("--gateway", help="also measure through a running gateway at this URL (openai SDK streaming)")
    ap.add_argument("--gateway-model", default="llamacpp/tiny-bench")
    ap.add_argument("--api-key", default="none")
    args = ap.parse_args()

    model = Path(args.model)
    if not model.exists():
        write_tiny_gguf(model, **BENCH)  # type: ignore[arg-type]
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads,
                          verbose=False)
    backend = LlamaCppBackend(str(model), "tiny-bench", {"threads": args.threads, "n_ctx": 4096})
    backend.load()
    client = None
    if args.gateway:
        from openai import OpenAI

        client = OpenAI(base_url=args.gateway.rstrip("/") + "/v1", api_key=args.api_key)

    # warm-up: first calls pay allocation and page-in costs
    bench_llama_cpp_python(llm, 16)
    bench_backend(backend, 16)
    results: dict[str, list[Sample]] = {"llama-cpp-python create_chat_completion(stream=True)": [],
                                        "acore LlamaCppBackend.generate (in-process)": []}
    if client is not None:
        results["acore gateway + worker (openai SDK stream)"] = []
        bench_gateway(client, args.gateway_model, 16)
    names = list(results)
    for _ in range(args.runs):
        results[names[0]].append(bench_llama_cpp_python(llm, args.tokens))
        results[names[1]].append(bench_backend(backend, args.tokens))
        if client is not None:
            results[names[2]].append(bench_gateway(client, args.gateway_model, args.tokens))

    base_tps = statistics.median(s[1] for s in results[names[0]])
    print(f"\nModel {model.name} ({model.stat().st_size / 1e6:.1f} MB), {args.tokens} tokens, greedy, "
          f"n_threads={args.threads}, {args.runs} interleaved runs, medians\n")
    print("| path | TTFT ms | decode tok/s | vs llama-cpp-python | tokens/chunks |")
    print("|---|---:|---:|---:|---:|")
    for name, samples in results.items():
        ttft = statistics.median(s[0] for s in samples) * 1000
        tps = statistics.median(s[1] for s in samples)
        print(f"| {name} | {ttft:.2f} | {tps:,.0f} | {tps / base_tps:.2f}× | {samples[0][2]} |")

    cold, warm, n_prompt, n_cached = prefix_ttft(backend, args.runs, args.prefix_words)
    print(f"\nPrompt cache, {n_prompt}-token prompt sharing a {n_cached}-token prefix, an unrelated request "
          "in between, medians\n")
    print("| request | TTFT ms |")
    print("|---|---:|")
    print(f"| uncached (cold) | {cold * 1000:.1f} |")
    print(f"| cached prefix | {warm * 1000:.1f} |")
    print(f"| ratio cached/uncached | {warm / cold:.3f} |")
    backend.unload()
    llm.close()


if __name__ == "__main__":
    main()
