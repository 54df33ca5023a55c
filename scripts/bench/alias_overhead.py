"""Alias cost: the same load through one gateway to ``openai/bench`` by its id and by an alias.

    .venv/bin/python scripts/bench/alias_overhead.py            # ~1 minute
    .venv/bin/python scripts/bench/alias_overhead.py --quick

One lean fake upstream and one ``acore-gateway`` (scripts/bench/gateway_overhead.py's, reused)
whose config file has ``[models."bench-alias"] targets = ["openai/bench"]``. For each mode and
concurrency the driver alternates windows by id and by alias on the same gateway (interleaved,
so machine drift hits both) and reports medians: req/s, p50 latency, time to first chunk, the
paired ratio alias/id (the median of the per-round ratios) and the gateway's CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import (  # the sibling benchmark's driver and fake, reused
    Window,
    base_env,
    build_request,
    free_port,
    med,
    pct,
    run_window,
    start,
)

ALIAS = "bench-alias"


def _cpu_per_request(windows: list[Window]) -> float:
    """The gateway's CPU time per request: less sensitive than req/s to other load on the machine."""
    requests = sum(len(w.latencies) for w in windows)
    return sum(w.cpu_s for w in windows) / requests * 1e6 if requests else float("nan")


async def bench(options: argparse.Namespace, port: int, pid: int) -> list[str]:
    server = psutil.Process(pid)
    rows = ["| mode | c | by id req/s | by alias req/s | alias / id (paired) | id p50 ms | alias p50 ms "
            "| id TTFC p50 ms | alias TTFC p50 ms | id CPU µs/req | alias CPU µs/req |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in ("plain", "stream"):
        stream = mode == "stream"
        for concurrency in options.concurrency:
            by_id: list[Window] = []
            by_alias: list[Window] = []
            for round_ in range(options.rounds):
                sides = [("id", "openai/bench", by_id), ("alias", ALIAS, by_alias)]
                for _name, model, into in sides if round_ % 2 == 0 else sides[::-1]:
                    into.append(await run_window(port, build_request(port, model, stream), stream, concurrency,
                                                 options.seconds, server))
            paired = statistics.median(a.rps / i.rps for a, i in zip(by_alias, by_id, strict=True) if i.rps)
            ms = 1000.0
            label = "non-stream" if mode == "plain" else "stream"
            ttfc = (f"{med(by_id, lambda w: pct(w.ttfc, 0.5)) * ms:.2f} | {med(by_alias, lambda w: pct(w.ttfc, 0.5)) * ms:.2f}"
                    if stream else "– | –")
            rows.append(f"| {label} | {concurrency} | {med(by_id, lambda w: w.rps):,.0f} "
                        f"| {med(by_alias, lambda w: w.rps):,.0f} | {paired:.2f} "
                        f"| {med(by_id, lambda w: pct(w.latencies, 0.5)) * ms:.2f} "
                        f"| {med(by_alias, lambda w: pct(w.latencies, 0.5)) * ms:.2f} | {ttfc} "
                        f"| {_cpu_per_request(by_id):.0f} | {_cpu_per_request(by_alias):.0f} |")
            print(rows[-1], file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="1.5 s windows, 2 rounds")
    parser.add_argument("--log-dir", default="/tmp")
    options = parser.parse_args()
    if options.quick:
        options.seconds, options.rounds = 1.5, 2
    log_dir = Path(options.log_dir)
    fake_port, gateway_port = free_port(), free_port()
    env = base_env()
    overhead = str(Path(__file__).resolve().parent / "gateway_overhead.py")
    fake = start([overhead, "--serve-fake", str(fake_port), "--chunks", str(options.chunks)], env, fake_port,
                 "/v1/models", log_dir / "alias-bench-fake.log")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as config:
        config.write(f'[models."{ALIAS}"]\ntargets = ["openai/bench"]\n')
    gateway_env = base_env({"OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1", "OPENAI_API_KEY": "sk-bench"})
    gateway = start(["-m", "gateway", "--port", str(gateway_port), "--no-default-embeddings", "--config", config.name],
                    gateway_env, gateway_port, "/health", log_dir / "alias-bench-gateway.log")
    try:
        rows = asyncio.run(bench(options, gateway_port, gateway.pid))
    finally:
        for process in (gateway, fake):
            process.send_signal(2)
            process.wait(10)
        os.unlink(config.name)
    load = os.getloadavg()
    print(f"\n{os.cpu_count()} CPUs, load average {load[0]:.1f}; {options.rounds} rounds x {options.seconds:g} s "
          f"windows per side and cell; medians of the rounds.\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
