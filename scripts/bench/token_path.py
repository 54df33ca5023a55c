#!/usr/bin/env python
"""The token path (issue 13): the gateway's CPU per streamed token from local workers, ipc vs tcp+CURVE.

    .venv/bin/python scripts/bench/token_path.py                              # this checkout (~3 min)
    .venv/bin/python scripts/bench/token_path.py --baseline /tmp/acore-before # and another, same rounds

Every gateway runs as its own process with supervised workers on 127.0.0.1; the gateway's own
CPU time (psutil user+system of its process, not its workers) is divided by the completion
tokens it streamed. Rounds alternate between the gateways compared, and medians are reported.

(a) llama.cpp: one stream of --tokens tokens from the tiny 4-layer bench GGUF (greedy), one
    worker: CPU µs per token, and time to first token through the gateway vs the same backend
    in-process (added TTFT).
(b) echo workers (a test backend that sleeps --delay-ms per token, so the workers cost almost no
    CPU and the gateway's cost stands out): 1, 2 and 4 workers, --clients concurrent streams,
    over ipc:// and over tcp:// with CurveZMQ: aggregate tokens/s and gateway CPU µs per token.
(c) the time a worker takes to rejoin after a partition heals (a relay between worker and
    gateway is paused until the worker is declared dead, then resumed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import http  # noqa: E402 - after the path set-up above
from tests.procs import Proc, free_port, start, start_relay, start_worker  # noqa: E402

ECHO_ENV = {"ACORE_TEST_BACKENDS": "1"}


@dataclass
class Gateway:
    label: str
    proc: Proc
    cpu: psutil.Process


STREAM_INTERVAL_MS: float | None = None  # --stream-interval-ms: [limits] stream_interval_ms of this checkout


def start_gateway(checkout: Path, label: str, config: str, log_dir: Path, extra: list[str]) -> Gateway:
    port = free_port()
    if STREAM_INTERVAL_MS is not None and checkout == ROOT:
        config = f"[limits]\nstream_interval_ms = {STREAM_INTERVAL_MS}\n" + config
    path = log_dir / f"{label}-{port}.toml"
    path.write_text(config)
    env = {**ECHO_ENV, "PYTHONPATH": str(checkout)}
    proc = start(["-m", "gateway", "--port", str(port), "--no-default-embeddings", "--config", str(path), *extra],
                 port=port, log_dir=log_dir, name=f"bench-{label}", env=env, timeout=60, cwd=checkout)
    return Gateway(label, proc, psutil.Process(proc.process.pid))


def wait_workers(gw: Gateway, model: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        providers = http.get_json(gw.proc.url + "/providers")["providers"]
        workers = [w for p in providers for w in p.get("workers", []) if w["alive"] and w["model"] == model]
        if len(workers) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{gw.label}: {count} worker(s) of {model} did not join:\n{gw.proc.log()[-3000:]}")


async def stream(session: aiohttp.ClientSession, url: str, model: str, tokens: int) -> tuple[int, float, float]:
    """One streamed chat: (completion tokens, seconds to the first content, total seconds)."""
    body = {"model": model, "stream": True, "max_tokens": tokens, "temperature": 0,
            "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "Tell a story."}]}
    started = time.perf_counter()
    first = 0.0
    completion = 0
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = orjson.loads(line[6:])
            if not first and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                completion = int(chunk["usage"]["completion_tokens"])
    return completion, first, time.perf_counter() - started


async def load(gw: Gateway, model: str, clients: int, per_client: int, tokens: int) -> dict[str, float]:
    before = gw.cpu.cpu_times()
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def client() -> list[tuple[int, float, float]]:
            return [await stream(session, gw.proc.url, model, tokens) for _ in range(per_client)]

        results = [r for rs in await asyncio.gather(*(client() for _ in range(clients))) for r in rs]
    wall = time.perf_counter() - started
    after = gw.cpu.cpu_times()
    cpu = after.user + after.system - before.user - before.system
    total = sum(r[0] for r in results)
    return {"tokens": total, "tps": total / wall, "cpu_us_per_token": cpu / total * 1e6 if total else float("nan"),
            "ttft_ms": statistics.median(r[1] for r in results) * 1000}


def gateway_ttft(gw: Gateway, model: str, requests: int) -> float:
    """Median ms from sending a streamed request to the first content byte, on one keep-alive
    connection with a raw socket (an HTTP client library would add its own parsing time)."""
    port = int(gw.proc.url.rsplit(":", 1)[1])
    body = orjson.dumps({"model": model, "stream": True, "max_tokens": 4, "temperature": 0,
                         "messages": [{"role": "user", "content": "Tell a story."}]})
    payload = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    times = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(requests + 2):
            started = time.perf_counter()
            sock.sendall(payload)
            seen, first = b"", 0.0
            while not seen.endswith(b"0\r\n\r\n"):
                seen += sock.recv(65536)
                if not first and seen.count(b'"content":"') > seen.count(b'"content":""'):
                    first = time.perf_counter() - started
            if index >= 2:  # the first two warm the prompt cache, as the in-process runs do
                times.append(first)
    return statistics.median(times) * 1000


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


# ---------------------------------------------------------------------------- (a) llama.cpp, one stream


def in_process_ttft(gguf: Path, tokens: int, rounds: int) -> float:
    from protocol.messages import Generate, SamplingParams
    from workers.backend import Delta
    from workers.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(str(gguf), "bench", {"threads": 1, "n_ctx": 4096})
    backend.load()
    times = []
    try:
        for index in range(rounds + 2):
            clock = {"started": time.perf_counter(), "first": 0.0}

            def emit(delta: Delta, clock: dict[str, float] = clock) -> None:
                if delta.text and not clock["first"]:
                    clock["first"] = time.perf_counter() - clock["started"]

            request = Generate(request_id="r", messages=[{"role": "user", "content": "Tell a story."}],
                               params=SamplingParams(max_tokens=tokens, temperature=0))
            backend.generate(request, emit, lambda: False)
            if index >= 2:  # warm, as through the gateway
                times.append(clock["first"])
    finally:
        backend.unload()
    return statistics.median(times) * 1000


def bench_llama(checkouts: list[tuple[str, Path]], log_dir: Path, options: argparse.Namespace) -> list[str]:
    from workers.tiny_models import BENCH, write_tiny_gguf

    gguf = write_tiny_gguf(log_dir / "bench.gguf", context_length=4096, **BENCH)
    config = (f'[[workers]]\nprovider = "llamacpp"\nmodel = "{gguf}"\nname = "bench"\nthreads = 1\n'
              "n_ctx = 4096\n")
    gateways = [start_gateway(path, label, config, log_dir, []) for label, path in checkouts]
    rows: dict[str, list[dict[str, float]]] = {g.label: [] for g in gateways}
    try:
        for gw in gateways:
            wait_workers(gw, "bench", 1)
            asyncio.run(load(gw, "llamacpp/bench", 1, 1, 16))  # warm-up
        for round_index in range(options.rounds):
            order = gateways if round_index % 2 == 0 else gateways[::-1]
            for gw in order:
                row = asyncio.run(load(gw, "llamacpp/bench", 1, 2, options.tokens))
                row["ttft_ms"] = gateway_ttft(gw, "llamacpp/bench", 5)
                rows[gw.label].append(row)
    finally:
        for gw in gateways:
            gw.proc.stop()
    local_ttft = in_process_ttft(gguf, 4, 5)
    out = [f"(a) llama.cpp bench model, 1 worker, 1 stream of {options.tokens} tokens, {options.rounds} rounds:", "",
           f"| gateway | tokens/s | gateway CPU µs/token | TTFT ms (in-process {local_ttft:.2f}) | added TTFT ms |",
           "|---|---:|---:|---:|---:|"]
    for label, data in rows.items():
        ttft = med(data, "ttft_ms")
        out.append(f"| {label} | {med(data, 'tps'):.0f} | {med(data, 'cpu_us_per_token'):.1f} | {ttft:.2f} "
                   f"| {ttft - local_ttft:+.2f} |")
    return out


# ---------------------------------------------------------------------------- (b) echo workers, ipc vs tcp+CURVE


def bench_echo(checkouts: list[tuple[str, Path]], log_dir: Path, options: argparse.Namespace) -> list[str]:
    keys = Path(tempfile.mkdtemp(prefix="acore-bench-keys-"))
    out = [f"(b) echo workers ({options.delay_ms} ms per token), {options.clients} concurrent streams of "
           f"{options.echo_tokens} tokens, {options.rounds} rounds:", "",
           "| gateway | transport | workers | tokens/s | gateway CPU µs/token |", "|---|---|---:|---:|---:|"]
    for workers in (1, 2, 4):
        config = (f'[[workers]]\nprovider = "echo"\nmodel = "delay={options.delay_ms / 1000}"\nname = "echo"\n'
                  f"replicas = {workers}\n")
        setups: list[tuple[str, Path, str, list[str]]] = []
        for label, path in checkouts:
            setups.append((label, path, "ipc", []))
            if path == ROOT:  # CURVE exists only in this checkout
                setups.append((label, path, "tcp+CURVE", ["--worker-bind", f"tcp://127.0.0.1:{free_port()}",
                                                          "--worker-keys", str(keys)]))
        gateways = [(start_gateway(path, f"{label}-{transport}-{workers}", config, log_dir, extra), label, transport)
                    for label, path, transport, extra in setups]
        rows: dict[int, list[dict[str, float]]] = {i: [] for i in range(len(gateways))}
        try:
            for gw, _, _ in gateways:
                wait_workers(gw, "echo", workers)
            for round_index in range(options.rounds):
                order = list(enumerate(gateways))
                if round_index % 2:
                    order.reverse()
                for index, (gw, _, _) in order:
                    rows[index].append(asyncio.run(load(gw, "llamacpp/echo", options.clients, 1,
                                                        options.echo_tokens)))
        finally:
            for gw, _, _ in gateways:
                gw.proc.stop()
        for index, (_, label, transport) in enumerate(gateways):
            out.append(f"| {label} | {transport} | {workers} | {med(rows[index], 'tps'):,.0f} "
                       f"| {med(rows[index], 'cpu_us_per_token'):.1f} |")
    return out


# ---------------------------------------------------------------------------- (c) rejoin after a partition


def bench_rejoin(log_dir: Path, options: argparse.Namespace) -> list[str]:
    keys = Path(tempfile.mkdtemp(prefix="acore-bench-keys-"))
    subprocess.run([sys.executable, "-m", "gateway", "keygen", str(keys)], check=True, capture_output=True, cwd=ROOT)
    subprocess.run([sys.executable, "-m", "workers", "keygen", str(keys), "--name", "far"], check=True,
                   capture_output=True, cwd=ROOT)
    (keys / "authorized" / "far.key").write_bytes((keys / "far.key").read_bytes())
    port = free_port()
    gw = start_gateway(ROOT, "rejoin", "", log_dir, ["--worker-bind", f"tcp://127.0.0.1:{port}",
                                                     "--worker-keys", str(keys)])
    relay = start_relay(log_dir, port)
    worker = start_worker(log_dir, "far", ["--provider", "echo", "--model", "tokens=2", "--name", "far",
                                           "--connect", f"tcp://{relay.address}", "--gateway-key",
                                           str(keys / "gateway.key"), "--key", str(keys / "far.key_secret")],
                          ECHO_ENV)
    times = []

    def alive() -> bool:
        providers = http.get_json(gw.proc.url + "/providers")["providers"]
        return any(w["alive"] and w["model"] == "far" for p in providers for w in p.get("workers", []))

    def until(predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not come back")
            time.sleep(0.01)

    try:
        until(alive, 60)
        for _ in range(options.rejoins):
            relay.pause()
            until(lambda: not alive(), 30)
            relay.resume()
            healed = time.perf_counter()
            until(alive, 30)
            times.append(time.perf_counter() - healed)
    finally:
        worker.stop()
        relay.stop()
        gw.proc.stop()
    return [f"(c) rejoin after a partition heals ({options.rejoins} partitions, each held until the worker was "
            "declared dead): median {:.0f} ms, max {:.0f} ms".format(statistics.median(times) * 1000,
                                                                     max(times) * 1000)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="CHECKOUT", help="another checkout, measured in the same rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per llama.cpp stream (default 256)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent echo streams (default 16)")
    parser.add_argument("--echo-tokens", type=int, default=200, help="tokens per echo stream (default 200)")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="echo worker's time per token (default 2 ms)")
    parser.add_argument("--rejoins", type=int, default=3)
    parser.add_argument("--only", choices=("llama", "echo", "rejoin"), help="run one part")
    parser.add_argument("--stream-interval-ms", type=float,
                        help="this checkout's [limits] stream_interval_ms (default: the gateway's own default)")
    parser.add_argument("--log-dir", default=None)
    options = parser.parse_args(argv)
    global STREAM_INTERVAL_MS
    STREAM_INTERVAL_MS = options.stream_interval_ms
    log_dir = Path(options.log_dir or tempfile.mkdtemp(prefix="acore-bench-"))
    checkouts = [("acore", ROOT)]
    if options.baseline:
        checkouts.append(("baseline", Path(options.baseline).resolve()))
    started = time.monotonic()
    lines: list[str] = []
    if options.only in (None, "llama"):
        lines += [*bench_llama(checkouts, log_dir, options), ""]
    if options.only in (None, "echo"):
        lines += [*bench_echo(checkouts, log_dir, options), ""]
    if options.only in (None, "rejoin"):
        lines += bench_rejoin(log_dir, options)
    load_avg = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load_avg[0]:.1f}; run took {time.monotonic() - started:.0f} s; "
          f"logs in {log_dir}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
