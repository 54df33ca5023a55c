#!/usr/bin/env python
"""Local workers (issue 4): llama.cpp in-process vs through gateway + worker, and 1 vs 2 workers under load.

    .venv/bin/python scripts/bench/worker_pool.py                    # full run (~2 minutes)
    .venv/bin/python scripts/bench/worker_pool.py --rounds 1 --tokens 32 --load-rounds 1 --load-requests 1

Starts its own gateways on 127.0.0.1 (one with ``replicas = 1``, one with ``replicas = 2`` of the
bench GGUF, ``threads = 1``, ``n_ctx = 4096``) and stops them (and so their workers) on exit, error
or Ctrl-C.

(a) Single stream, same model, same prompt, greedy, ``max_tokens`` tokens, rounds interleaved (the
order rotates each round, so drift in machine load hits every path), medians:

1. llama-cpp-python in-process, ``create_chat_completion(stream=True)``;
2. acore's ``LlamaCppBackend.generate`` in-process (the loop the worker runs);
3. the gateway + worker, read with the openai SDK (streaming), and with a raw aiohttp SSE reader
   (to separate the SDK's parsing cost from the gateway's).

TTFT is request start → first content; decode tok/s is (tokens − tokens of the first event) /
(last event − first event). The worker coalesces tokens that come faster than its socket thread
sends them into one frame (one SSE event), so a gateway event may carry several tokens: they are
counted by mapping the streamed text onto the token boundaries of the in-process backend run
(same code, same greedy output; checked). The added time per streamed token is
1/tps(gateway) − 1/tps(in-process). CPU per token (psutil user+system, summed over the rounds) of
the bench process (the model in-process; the client on the gateway paths), the gateway and its
worker is reported too, less the gateway's and worker's idle rate measured while the in-process
paths run: CPU is the least noisy measure on a shared machine.

(b) 1 vs 2 workers: ``--clients`` concurrent clients (asyncio + aiohttp, streaming) each send
``--load-requests`` requests of ``--load-tokens`` tokens per round; aggregate completion tokens /
wall time of the round; rounds alternate between the 1-worker and the 2-worker gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from protocol.messages import Generate, SamplingParams  # noqa: E402 - after the path set-up above
from tests.procs import Proc, start_gateway  # noqa: E402
from workers.backend import Delta  # noqa: E402
from workers.llamacpp import LlamaCppBackend  # noqa: E402
from workers.tiny_models import BENCH, write_tiny_gguf  # noqa: E402

MESSAGES = [{"role": "system", "content": "you are a helpful assistant"},
            {"role": "user", "content": "write a short story about the weather in the city"}]
NAME = "tiny-bench"
MODEL_ID = f"llamacpp/{NAME}"
N_CTX = 4096

PATHS = {
    "lcpp": "(1) llama-cpp-python `create_chat_completion(stream=True)`, in-process",
    "backend": "(2) acore `LlamaCppBackend.generate`, in-process",
    "sdk": "(3) gateway + worker, openai SDK stream",
    "raw": "(3) gateway + worker, raw aiohttp SSE reader",
}


# ----------------------------------------------------------------------------------- samples


@dataclass
class Sample:
    ttft_s: float
    decode_tps: float
    e2e_tps: float  # tokens / (last token − request start)
    tokens: int
    events: int = 0  # SSE events with content (gateway paths)
    all_events: int = 0  # every SSE event but [DONE]
    reads: int = 0  # socket reads that delivered data (raw reader)


@dataclass
class Timeline:
    """(time, tokens so far) at every delivery."""

    start: float
    points: list[tuple[float, int]] = field(default_factory=list)

    def sample(self, **extra: Any) -> Sample:
        if not self.points:
            raise RuntimeError("the stream delivered no content")
        t_first, n_first = self.points[0]
        t_last, n_total = self.points[-1]
        decode = (n_total - n_first) / (t_last - t_first) if t_last > t_first else 0.0
        return Sample(t_first - self.start, decode, n_total / (t_last - self.start), n_total, **extra)


class TokenMap:
    """Streamed text length → tokens so far, from the in-process backend's per-token deltas."""

    def __init__(self, deltas: list[tuple[str, int]]) -> None:
        self.ends: list[int] = []
        length = 0
        for text, n in deltas:
            length += len(text)
            self.ends += [length] * n
        self.text = "".join(text for text, _ in deltas)

    def tokens_at(self, length: int) -> int:
        return bisect.bisect_right(self.ends, length)


# ----------------------------------------------------------------------------------- in-process paths


def run_lcpp(llm: Any, tokens: int) -> Sample:
    line = Timeline(time.perf_counter())
    n = 0
    for chunk in llm.create_chat_completion(messages=MESSAGES, max_tokens=tokens, temperature=0.0,
                                            repeat_penalty=1.0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            n += 1
            line.points.append((time.perf_counter(), n))
    return line.sample()


def run_backend(backend: LlamaCppBackend, tokens: int, deltas: list[tuple[str, int]] | None = None) -> Sample:
    req = Generate(request_id="b", messages=MESSAGES, params=SamplingParams(max_tokens=tokens, temperature=0.0))
    line = Timeline(time.perf_counter())
    n = 0

    def emit(d: Delta) -> None:
        nonlocal n
        if deltas is not None:
            deltas.append((d.text, d.n_tokens))
        if d.n_tokens:
            n += d.n_tokens
            line.points.append((time.perf_counter(), n))

    backend.generate(req, emit, lambda: False)
    return line.sample()


# ----------------------------------------------------------------------------------- gateway paths


class CPUMeter:
    """CPU seconds (user+system, psutil) of this process, the gateway and its worker, per path."""

    def __init__(self, gateway_pid: int, worker_pid: int) -> None:
        self.procs = {"self": psutil.Process(), "gateway": psutil.Process(gateway_pid),
                      "worker": psutil.Process(worker_pid)}
        self.cpu: dict[tuple[str, str], float] = {}
        self.wall: dict[str, float] = {}
        self.tokens: dict[str, int] = {}

    def _now(self) -> dict[str, float]:
        return {name: (t := p.cpu_times()).user + t.system for name, p in self.procs.items()}

    def run(self, key: str, fn: Callable[[], Sample]) -> Sample:
        c0, t0 = self._now(), time.perf_counter()
        sample = fn()
        c1, t1 = self._now(), time.perf_counter()
        for name in self.procs:
            self.cpu[key, name] = self.cpu.get((key, name), 0.0) + c1[name] - c0[name]
        self.wall[key] = self.wall.get(key, 0.0) + t1 - t0
        self.tokens[key] = self.tokens.get(key, 0) + sample.tokens
        return sample

    def per_token_us(self, key: str, name: str, idle_keys: tuple[str, ...]) -> float:
        """CPU µs per token of one process on one path, less that process's idle rate (measured on idle_keys)."""
        idle_wall = sum(self.wall[k] for k in idle_keys)
        idle_rate = sum(self.cpu[k, name] for k in idle_keys) / idle_wall if idle_wall else 0.0
        return (self.cpu[key, name] - idle_rate * self.wall[key]) / self.tokens[key] * 1e6


def run_sdk(client: Any, tokens: int, tmap: TokenMap) -> Sample:
    line = Timeline(time.perf_counter())
    text = ""
    events = all_events = usage_tokens = 0
    stream = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        all_events += 1
        if chunk.usage is not None:
            usage_tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            events += 1
            line.points.append((time.perf_counter(), tmap.tokens_at(len(text))))
    check_text(text, tmap, usage_tokens)
    return line.sample(events=events, all_events=all_events)


async def stream_raw(session: aiohttp.ClientSession, url: str, tokens: int,
                     tmap: TokenMap | None) -> tuple[Timeline, str, int, int, int, int]:
    """POST a streaming chat completion and parse the SSE bytes by hand.

    Returns the timeline, the text, completion tokens (usage), content events, all events, reads.
    Without a token map every content event counts one token (only the usage total is exact then)."""
    body = {"model": MODEL_ID, "messages": MESSAGES, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    line = Timeline(time.perf_counter())
    text = ""
    events = all_events = reads = usage_tokens = 0
    buf = b""
    async with session.post(url + "/v1/chat/completions", data=orjson.dumps(body),
                            headers={"Content-Type": "application/json", "Authorization": "Bearer unused"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:500]}")
        async for data in resp.content.iter_any():
            now = time.perf_counter()
            reads += 1
            buf += data
            if b"\r" in buf:
                buf = buf.replace(b"\r\n", b"\n")
            while (end := buf.find(b"\n\n")) >= 0:
                event, buf = buf[:end], buf[end + 2:]
                payload = b"".join(ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:"))
                if not payload or payload == b"[DONE]":
                    continue
                obj = orjson.loads(payload)
                all_events += 1
                if obj.get("error"):
                    raise RuntimeError(f"error event: {obj['error']}")
                if obj.get("usage"):
                    usage_tokens = obj["usage"]["completion_tokens"]
                choices = obj.get("choices") or []
                content = choices[0].get("delta", {}).get("content") if choices else None
                if content:
                    text += content
                    events += 1
                    line.points.append((now, tmap.tokens_at(len(text)) if tmap else events))
    return line, text, usage_tokens, events, all_events, reads


def run_raw(runner: asyncio.Runner, session: aiohttp.ClientSession, url: str, tokens: int, tmap: TokenMap) -> Sample:
    line, text, usage_tokens, events, all_events, reads = runner.run(stream_raw(session, url, tokens, tmap))
    check_text(text, tmap, usage_tokens)
    return line.sample(events=events, all_events=all_events, reads=reads)


def check_text(text: str, tmap: TokenMap, usage_tokens: int) -> None:
    if text != tmap.text or usage_tokens != len(tmap.ends):
        raise RuntimeError(f"the gateway's output differs from the in-process backend's ({usage_tokens} vs "
                           f"{len(tmap.ends)} tokens; {text[:80]!r} vs {tmap.text[:80]!r}): cannot map events to tokens")


# ----------------------------------------------------------------------------------- (b) concurrent load


@dataclass
class LoadRound:
    tokens: int
    wall_s: float
    latencies: list[float]
    ttfts: list[float]

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s


async def load_round(session: aiohttp.ClientSession, url: str, clients: int, requests: int,
                     tokens: int) -> LoadRound:
    latencies: list[float] = []
    ttfts: list[float] = []
    total = 0

    async def client() -> None:
        nonlocal total
        for _ in range(requests):
            line, _, usage_tokens, _, _, _ = await stream_raw(session, url, tokens, None)
            latencies.append(line.points[-1][0] - line.start)
            ttfts.append(line.points[0][0] - line.start)
            total += usage_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return LoadRound(total, time.perf_counter() - t0, latencies, ttfts)


# ----------------------------------------------------------------------------------- gateways


def get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return orjson.loads(response.read())


def live_workers(gw: Proc) -> list[dict[str, Any]]:
    entry: dict[str, Any] = next((p for p in get_json(gw.url + "/providers")["providers"]
                                  if p["name"] == "llamacpp"), {})
    return [w for w in entry.get("workers", []) if w["alive"] and w["model"] == NAME]


@contextmanager
def gateways(model: Path, replica_counts: list[int], log_dir: Path) -> Iterator[list[Proc]]:
    """Start one gateway per replica count; always stop them, then any worker that outlived its gateway."""
    procs: list[Proc] = []
    worker_pids: list[int] = []
    try:
        for replicas in replica_counts:
            config = log_dir / f"gateway-{replicas}.toml"
            path = orjson.dumps(str(model)).decode()  # a JSON string is a valid TOML basic string
            config.write_text(f'[[workers]]\nprovider = "llamacpp"\nmodel = {path}\nname = "{NAME}"\n'
                              f"replicas = {replicas}\nthreads = 1\nn_ctx = {N_CTX}\n")
            proc = start_gateway(log_dir, extra_args=["--config", str(config)])
            procs.append(proc)
            deadline = time.monotonic() + 90
            while len(workers := live_workers(proc)) < replicas:
                if time.monotonic() > deadline or proc.process.poll() is not None:
                    raise RuntimeError(f"{replicas} worker(s) did not join:\n{proc.log()[-3000:]}")
                time.sleep(0.1)
            worker_pids += [int(w["pid"]) for w in workers if w.get("pid")]
        yield procs
    finally:
        for proc in procs:
            proc.stop()
        deadline = time.monotonic() + 5
        for pid in worker_pids:
            while psutil.pid_exists(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(p.cmdline()):
                    p.kill()
                    print(f"killed worker {pid}, which outlived its gateway", file=sys.stderr)
            except psutil.Error:
                pass


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the gateways


# ----------------------------------------------------------------------------------- report


def med(values: list[float]) -> float:
    return statistics.median(values)


class Machine:
    """Load average, and the share of CPU time the hypervisor stole (/proc/stat, Linux) since the last mark."""

    def __init__(self) -> None:
        self._last = self._stat()

    @staticmethod
    def _stat() -> list[int] | None:
        try:
            with open("/proc/stat") as f:
                return [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None

    def mark(self) -> str:
        now = self._stat()
        text = "load average " + "/".join(f"{x:.2f}" for x in os.getloadavg())
        if now and self._last:
            delta = [a - b for a, b in zip(now, self._last, strict=True)]
            busy = sum(delta[:3]) + sum(delta[4:7])
            text += (f", CPU {100 * busy / max(1, sum(delta)):.0f} % busy, {100 * delta[7] / max(1, sum(delta)):.0f} % "
                     "stolen by the hypervisor")
        self._last = now
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / ".cache/models/tiny-bench.gguf"))
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds of (a) (default 9)")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per stream in (a) (default 256)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients in (b) (default 4)")
    ap.add_argument("--load-tokens", type=int, default=128, help="tokens per request in (b) (default 128)")
    ap.add_argument("--load-requests", type=int, default=3, help="requests per client per round in (b) (default 3)")
    ap.add_argument("--load-rounds", type=int, default=6, help="rounds per worker count in (b) (default 6)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)

    model = Path(args.model)
    if not model.exists():
        write_tiny_gguf(model, **BENCH)  # type: ignore[arg-type]
    import llama_cpp
    from openai import OpenAI

    started = time.monotonic()
    machine = Machine()
    time.sleep(2)
    load_before = machine.mark()  # 2 s idle
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=N_CTX, n_threads=1, n_threads_batch=1, verbose=False)
    backend = LlamaCppBackend(str(model), NAME, {"threads": 1, "n_ctx": N_CTX})
    backend.load()

    with tempfile.TemporaryDirectory(prefix="acore-bench-") as tmp, \
            gateways(model, [1, 2], Path(tmp)) as (gw1, gw2), \
            asyncio.Runner() as runner:
        session = runner.run(_session())
        try:
            client = OpenAI(base_url=gw1.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            cpu = CPUMeter(gw1.process.pid, int(live_workers(gw1)[0]["pid"]))

            # warm-up (allocation, page-in, connection set-up); the backend's reference deltas give the token map
            run_lcpp(llm, 16)
            deltas: list[tuple[str, int]] = []
            run_backend(backend, args.tokens, deltas)
            tmap = TokenMap(deltas)
            run_sdk(client, args.tokens, tmap)
            run_raw(runner, session, gw1.url, args.tokens, tmap)
            runner.run(load_round(session, gw2.url, args.clients, 1, 8))

            runs: dict[str, Callable[[], Sample]] = {
                "lcpp": lambda: run_lcpp(llm, args.tokens),
                "backend": lambda: run_backend(backend, args.tokens),
                "sdk": lambda: run_sdk(client, args.tokens, tmap),
                "raw": lambda: run_raw(runner, session, gw1.url, args.tokens, tmap),
            }
            results: dict[str, list[Sample]] = {key: [] for key in runs}
            order = list(runs)
            machine.mark()
            for r in range(args.rounds):
                for key in order[r % len(order):] + order[:r % len(order)]:
                    results[key].append(cpu.run(key, runs[key]))
            load_a = machine.mark()

            load: dict[int, list[LoadRound]] = {1: [], 2: []}
            for r in range(args.load_rounds):
                for replicas, gw in ((1, gw1), (2, gw2)) if r % 2 == 0 else ((2, gw2), (1, gw1)):
                    load[replicas].append(runner.run(load_round(session, gw.url, args.clients, args.load_requests,
                                                                args.load_tokens)))
            load_b = machine.mark()
        finally:
            runner.run(session.close())

    backend.unload()
    llm.close()
    report(args, model, results, cpu, load, (load_before, load_a, load_b), time.monotonic() - started)


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300),
                                 connector=aiohttp.TCPConnector(limit=0))


def report(args: argparse.Namespace, model: Path, results: dict[str, list[Sample]], cpu: CPUMeter,
           load: dict[int, list[LoadRound]],
           loads: tuple[str, str, str], elapsed: float) -> None:
    n = results["lcpp"][0].tokens
    print(f"\n(a) {model.name} ({model.stat().st_size / 1e6:.1f} MB), {n} tokens, greedy, n_threads=1, "
          f"{args.rounds} interleaved rounds, medians. Idle before: {loads[0]}. During (a): {loads[1]}.\n")
    print("| path | TTFT ms | decode tok/s (min–max) | end-to-end tok/s | decode vs (1) | tokens | SSE events with content "
          "(all) | HTTP reads | CPU µs/token: bench process | gateway | worker |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = med([s.decode_tps for s in results["lcpp"]])
    idle = ("lcpp", "backend")  # the gateway and its worker are idle while the in-process paths run
    for key, samples in results.items():
        tps = med([s.decode_tps for s in samples])
        gateway = key in ("sdk", "raw")
        events = f"{med([s.events for s in samples]):.0f} ({med([s.all_events for s in samples]):.0f})" if gateway else "–"
        reads = f"{med([s.reads for s in samples]):.0f}" if key == "raw" else "–"
        procs = [f"{cpu.per_token_us(key, 'self', ()):.0f}"]
        procs += [f"{cpu.per_token_us(key, name, idle):.0f}" if gateway else "–" for name in ("gateway", "worker")]
        lo, hi = min(s.decode_tps for s in samples), max(s.decode_tps for s in samples)
        print(f"| {PATHS[key]} | {med([s.ttft_s for s in samples]) * 1000:.2f} | {tps:,.0f} ({lo:,.0f}–{hi:,.0f}) | "
              f"{med([s.e2e_tps for s in samples]):,.0f} | {tps / base:.3f}× | {samples[0].tokens} | {events} | "
              f"{reads} | {' | '.join(procs)} |")

    print("\nGateway vs in-process, decode tok/s. Ratio of medians, and in brackets the median of the per-round "
          "ratios (paired, same round); added time per token = 1/tps(gateway) − 1/tps(in-process).\n")
    print("| gateway reader | vs | ratio (goal ≥ 0.95) | added µs/token (goal ≤ 50) | TTFT added ms |")
    print("|---|---|---:|---:|---:|")
    for key in ("sdk", "raw"):
        for ref in ("lcpp", "backend"):
            g = med([s.decode_tps for s in results[key]])
            b = med([s.decode_tps for s in results[ref]])
            paired = med([x.decode_tps / y.decode_tps for x, y in zip(results[key], results[ref], strict=True)])
            added = med([1e6 / x.decode_tps - 1e6 / y.decode_tps
                         for x, y in zip(results[key], results[ref], strict=True)])
            ttft = (med([s.ttft_s for s in results[key]]) - med([s.ttft_s for s in results[ref]])) * 1000
            print(f"| {PATHS[key].split(', ')[1]} | ({'1' if ref == 'lcpp' else '2'}) "
                  f"{'llama-cpp-python' if ref == 'lcpp' else 'LlamaCppBackend'} | {g / b:.3f} ({paired:.3f}) | "
                  f"{1e6 / g - 1e6 / b:+.1f} ({added:+.1f}) | {ttft:+.2f} |")

    print(f"\n(b) {args.clients} concurrent clients (aiohttp, streaming), each {args.load_requests} requests of "
          f"{args.load_tokens} tokens per round, {args.load_rounds} rounds per worker count, alternating; "
          f"threads=1 per worker. During (b): {loads[2]}.\n")
    print("| workers | aggregate tok/s (median) | min–max | request p50 s | TTFT p50 ms | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    one = med([r.tps for r in load[1]])
    for replicas, rounds in load.items():
        rates = [r.tps for r in rounds]
        lat = med([x for r in rounds for x in r.latencies])
        ttft = med([x for r in rounds for x in r.ttfts]) * 1000
        print(f"| {replicas} | {med(rates):,.0f} | {min(rates):,.0f}–{max(rates):,.0f} | {lat:.3f} | {ttft:.1f} | "
              f"{med(rates) / one:.2f}× |")
    print(f"\n{os.cpu_count()} CPUs; whole run {elapsed:.0f} s.")


if __name__ == "__main__":
    main()
