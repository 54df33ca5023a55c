#!/usr/bin/env python
"""Prompt cache through the gateway: TTFT cached vs uncached, and cache-aware vs least-loaded routing.

    .venv/bin/python scripts/bench/prompt_cache.py [--runs 3] [--prefix-reps 180] [--sessions 12] [--turns 3]

(a) One gateway, one worker: time to first token of a request sharing a ~2,000-token prefix with
    an earlier one (cached) vs a request whose prefix is new (uncached), runs interleaved. Goal:
    cached <= 1/10 of uncached.
(b) Two gateways, each supervising two workers of the same model: one with cache-aware routing,
    one with ACORE_CACHE_AWARE_ROUTING=0 (plain least-loaded). The same multi-session workload
    (sessions with different long system prompts, turns interleaved in a seeded random order, one
    request at a time, no prompt_cache_key) runs on each; the mean TTFT ratio is reported.

Model: the bench GGUF (4 layers, hidden 256, zeroed special rows) with threads=1 per worker (two
threads on a shared 2-core box are unsteady). Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from workers.tiny_models import BENCH, write_tiny_gguf  # noqa: E402

MODEL = "llamacpp/bench"
PHRASE = "the weather in the city is good today"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gateway:
    """An acore-gateway subprocess supervising ``replicas`` workers of the bench model."""

    def __init__(self, model: Path, replicas: int, cache_aware: bool, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = log_dir / f"bench-{self.port}.toml"
        config.write_text(f'[[workers]]\nprovider = "llamacpp"\nmodel = "{model}"\nname = "bench"\n'
                          f"replicas = {replicas}\nthreads = 1\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACORE_", "ABSTRACT"))}
        env.update(PYTHONPATH=str(ROOT), ACORE_CACHE_AWARE_ROUTING="1" if cache_aware else "0")
        self.log = (log_dir / f"gateway-{self.port}.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--port", str(self.port),
                                      "--no-default-embeddings", "--config", str(config)],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the gateway exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as response:
                    data = {m["id"]: m for m in json.loads(response.read())["data"]}
                if data.get(MODEL, {}).get("workers", 0) >= replicas:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            self.stop()
            raise SystemExit(f"the workers did not join; see {self.log.name}")
        self.last_text = ""
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=600)

    def ttft(self, messages: list[dict[str, str]], key: str | None = None) -> tuple[float, int, int]:
        """Seconds to the first streamed token, prompt tokens, cached tokens."""
        extra: dict[str, Any] = {"prompt_cache_key": key} if key else {}
        start = time.perf_counter()
        first = 0.0
        usage = None
        self.last_text = ""
        stream = self.client.chat.completions.create(  # type: ignore[call-overload]
            model=MODEL, messages=messages, max_tokens=4, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body=extra)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                self.last_text += chunk.choices[0].delta.content
            if chunk.usage is not None:
                usage = chunk.usage
        assert usage is not None and first
        details = usage.prompt_tokens_details
        return first - start, usage.prompt_tokens, int(details.cached_tokens or 0) if details else 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def system_prompt(tag: str, reps: int) -> str:
    # The tag goes first so that two prompts share nothing beyond the template's first tokens.
    return f"{tag} . " + " ".join([PHRASE] * reps)


def bench_prefix(gw: Gateway, runs: int, reps: int) -> None:
    cold: list[float] = []
    warm: list[float] = []
    n_prompt = n_cached = 0
    gw.ttft([{"role": "user", "content": "warm up"}])
    for run in range(runs):
        system = {"role": "system", "content": system_prompt(f"run {run} {random.random():.6f}", reps)}
        t, n_prompt, reused = gw.ttft([system, {"role": "user", "content": "tell me a short story"}])
        assert reused < 16, f"the uncached request reused {reused} tokens"
        cold.append(t)
        # An unrelated request in between: the prefix must come back from the cache, not the live context.
        gw.ttft([{"role": "user", "content": f"unrelated question {run}"}])
        t, n_prompt, n_cached = gw.ttft([system, {"role": "user", "content": "write some code please"}])
        warm.append(t)
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"\n### (a) TTFT, {n_prompt}-token prompt sharing a {n_cached}-token prefix "
          f"(one worker, median of {runs})\n")
    print("| request | TTFT ms |\n|---|---:|")
    print(f"| uncached | {c * 1000:.1f} |")
    print(f"| cached prefix | {w * 1000:.1f} |")
    print(f"| ratio cached/uncached | {w / c:.3f} (goal <= 0.100: {'met' if w <= c / 10 else 'NOT met'}) |")


def workload(sessions: int, turns: int, seed: int) -> list[int]:
    """Which session speaks next: a seeded random interleaving of every session's turns."""
    order = [s for s in range(sessions) for _ in range(turns)]
    random.Random(seed).shuffle(order)
    return order


def run_sessions(gw: Gateway, order: list[int], reps: int) -> tuple[list[float], int, int]:
    """Each session resends its whole conversation, with the model's real replies (as clients do)."""
    histories: dict[int, list[dict[str, str]]] = {}
    times, cached, prompt = [], 0, 0
    for s in order:
        messages = histories.setdefault(s, [{"role": "system", "content": system_prompt(f"session {s} agent", reps)}])
        messages.append({"role": "user", "content": f"question {len(messages) // 2} : what about the city"})
        t, p, c = gw.ttft(messages)
        messages.append({"role": "assistant", "content": gw.last_text})
        times.append(t)
        cached += c
        prompt += p
    return times, cached, prompt


def bench_routing(model: Path, log_dir: Path, sessions: int, turns: int, reps: int, seed: int) -> None:
    order = workload(sessions, turns, seed)
    results: dict[str, tuple[list[float], int, int]] = {}
    for label, aware in (("cache-aware", True), ("least-loaded", False)):
        gw = Gateway(model, 2, aware, log_dir)
        try:
            gw.ttft([{"role": "user", "content": "warm up"}])
            results[label] = run_sessions(gw, order, reps)
        finally:
            gw.stop()
    first_turn = results["cache-aware"][2] // len(order)
    print(f"\n### (b) Two workers, {sessions} sessions x {turns} turns (different long system prompts, "
          f"{first_turn} prompt tokens per request on average, seeded interleaving, one request at a time)\n")
    print("| routing | mean TTFT ms | median TTFT ms | prompt tokens reused |\n|---|---:|---:|---:|")
    for label, (times, cached, prompt) in results.items():
        print(f"| {label} | {statistics.mean(times) * 1000:.1f} | {statistics.median(times) * 1000:.1f} | "
              f"{cached / prompt:.0%} |")
    ratio = statistics.mean(results["cache-aware"][0]) / statistics.mean(results["least-loaded"][0])
    print(f"| ratio (cache-aware / least-loaded), mean | {ratio:.3f} | | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prefix-reps", type=int, default=180, help="system prompt size for (a) (180 → ~2,000 tokens)")
    ap.add_argument("--sessions", type=int, default=12, help="sessions for (b); a worker keeps ~8 automatic snapshots")
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--session-reps", type=int, default=90, help="system prompt size per session in (b)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", choices=("a", "b"))
    args = ap.parse_args()
    out = ROOT / ".cache" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    model = write_tiny_gguf(ROOT / ".cache" / "models" / "bench.gguf", **BENCH)  # type: ignore[arg-type]
    if args.only != "b":
        gw = Gateway(model, 1, True, out)
        try:
            bench_prefix(gw, args.runs, args.prefix_reps)
        finally:
            gw.stop()
    if args.only != "a":
        bench_routing(model, out, args.sessions, args.turns, args.session_reps, args.seed)


if __name__ == "__main__":
    main()
