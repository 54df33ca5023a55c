#!/usr/bin/env python
"""Tokens/s of the transformers worker: gateway + worker vs in-process ``generate`` streaming, and
4 concurrent streams through a worker that decodes them one at a time (``--max-batch 1``), through
one that batches them (the default), and one in-process ``generate`` over the 4 prompts.

    .venv/bin/python scripts/bench/transformers_tokens.py [--rounds 5] [--max-tokens 128]

It writes a tiny random llama (workers/transformers_tiny.py, 4 layers, hidden 256 by default) under
.cache/models/, starts a gateway with a ``[[workers]] provider = "huggingface"`` worker (``threads =
1``) on a free port plus a second worker of the same model started by hand with ``--max-batch 1``
(served under another name), and runs the modes interleaved, round by round, so background load hits
each alike; medians reported. Every mode uses one torch thread, greedy decoding and the same prompt,
and produces exactly max_tokens (EOS suppressed), so the figures compare the same work. The batches
the worker formed are counted from its log lines ("generating N requests in one batch").
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Please write a short story about a cat and a dog."}]
STREAMS = 4


def in_process_stream(model: Any, tokenizer: Any, max_tokens: int) -> tuple[int, float]:
    """transformers' own streaming: generate() on a thread, text from a TextIteratorStreamer."""
    import torch
    from transformers import TextIteratorStreamer

    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    start = time.perf_counter()
    worker = threading.Thread(target=lambda: model.generate(ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                                           do_sample=False, streamer=streamer))
    with torch.inference_mode():
        worker.start()
        last = start
        for text in streamer:
            if text:
                last = time.perf_counter()
        worker.join()
    return max_tokens, last - start


def in_process_batched(model: Any, tokenizer: Any, max_tokens: int) -> tuple[int, float]:
    """One generate() over STREAMS prompts (left-padded): what batching the worker's requests would give."""
    import torch

    prompts = [tokenizer.apply_chat_template([*MESSAGES[:1], {"role": "user", "content": f"{MESSAGES[1]['content']} {i}"}],
                                             add_generation_prompt=True, tokenize=False) for i in range(STREAMS)]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    return (out.shape[1] - batch["input_ids"].shape[1]) * STREAMS, seconds


def gateway_stream(client: Any, model: str, max_tokens: int, bias: dict[str, float], suffix: str = "") -> tuple[int, float]:
    messages = [MESSAGES[0], {"role": "user", "content": MESSAGES[1]["content"] + suffix}]
    start = time.perf_counter()
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0.0,
                                            logit_bias=bias, stream=True, stream_options={"include_usage": True})
    n, last = 0, start
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
    return n, last - start


def gateway_concurrent(client: Any, model: str, max_tokens: int, bias: dict[str, float]) -> tuple[int, float]:
    """STREAMS streams at once through the gateway: total tokens / wall time."""
    counts = [0] * STREAMS

    def one(i: int) -> None:
        counts[i] = gateway_stream(client, model, max_tokens, bias, f" {i}")[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(STREAMS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - start


GATEWAY_LOG = REPO / ".cache" / "bench-transformers-gateway.log"
ONE_AT_A_TIME = "one-at-a-time"  # the name the --max-batch 1 worker serves the model under


def start_gateway(model_dir: Path) -> tuple[list[subprocess.Popen[bytes]], str]:
    """The gateway (supervising the batching worker) and the --max-batch 1 worker joined to it."""
    from protocol.endpoints import default_worker_endpoint

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    log = open(GATEWAY_LOG, "wb")
    config = REPO / ".cache" / "bench-transformers.toml"
    config.write_text(f'[[workers]]\nprovider = "huggingface"\nmodel = "{model_dir}"\nthreads = 1\n')
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "--port", str(port), "--no-default-embeddings",
                                "--config", str(config)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    queued = subprocess.Popen([sys.executable, "-m", "workers", "--provider", "huggingface", "--model", str(model_dir),
                               "--name", ONE_AT_A_TIME, "--threads", "1", "--max-batch", "1",
                               "--connect", default_worker_endpoint(port)],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return [queued, gateway], f"http://127.0.0.1:{port}"


def batch_sizes() -> list[int]:
    """The size of every batch the worker logged (a request alone logs nothing)."""
    pattern = re.compile(r"generating (\d+) requests in one batch")
    return [int(m.group(1)) for m in pattern.finditer(GATEWAY_LOG.read_text(errors="replace"))]


def wait_model(url: str, model: str, timeout: float = 180) -> None:
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as response:
                if any(m["id"] == model and m.get("workers") for m in json.load(response)["data"]):
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{model} not served by {url} within {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / ".cache" / "models" / "tiny-transformers-bench")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()

    import openai
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.transformers_tiny import write_tiny_transformers_model

    torch.set_num_threads(1)
    if not (args.model / "config.json").exists():
        write_tiny_transformers_model(args.model, layers=args.layers, hidden=args.hidden)
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    served = f"huggingface/{args.model.name}"
    bias = {str(tokenizer.eos_token_id): -100.0}  # every run produces exactly max_tokens

    (REPO / ".cache").mkdir(exist_ok=True)
    procs, url = start_gateway(args.model)
    try:
        wait_model(url, served)
        wait_model(url, f"huggingface/{ONE_AT_A_TIME}")
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        single = {"in-process generate + TextIteratorStreamer": lambda: in_process_stream(model, tokenizer,
                                                                                        args.max_tokens),
                  "gateway + worker (openai SDK, streaming)": lambda: gateway_stream(client, served, args.max_tokens,
                                                                                     bias)}
        concurrent = {f"{STREAMS} streams through the gateway, worker one at a time (--max-batch 1)":
                      lambda: gateway_concurrent(client, f"huggingface/{ONE_AT_A_TIME}", args.max_tokens, bias),
                      f"{STREAMS} streams through the gateway, worker batches them (default)":
                      lambda: gateway_concurrent(client, served, args.max_tokens, bias),
                      f"one in-process generate over {STREAMS} prompts (batched)":
                      lambda: in_process_batched(model, tokenizer, args.max_tokens)}
        modes = {**single, **concurrent}
        for run in modes.values():  # warm-up
            run()
        rates: dict[str, list[float]] = {label: [] for label in modes}
        for _ in range(args.rounds):
            for label, run in modes.items():
                n, seconds = run()
                rates[label].append(n / seconds)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(f"\ntransformers tokens/s, tiny llama {args.layers} layers x {args.hidden} ({args.max_tokens} tokens, "
          f"greedy, 1 thread), median of {args.rounds} interleaved rounds\n")
    print("| mode | median tok/s | min | max | ratio |")
    print("|---|---:|---:|---:|---:|")
    for group in (single, concurrent):
        labels = list(group)
        base = statistics.median(rates[labels[0]])
        for label in labels:
            med = statistics.median(rates[label])
            print(f"| {label} | {med:,.0f} | {min(rates[label]):,.0f} | {max(rates[label]):,.0f} | "
                  f"{med / base:.2f}x |")
    sizes = batch_sizes()
    counts = ", ".join(f"{sizes.count(n)} of {n}" for n in sorted(set(sizes)))
    print(f"\nbatches the worker decoded ({args.rounds + 1} concurrent runs, warm-up included): {counts or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
