"""What the Anthropic door costs: /v1/messages vs /v1/chat/completions, same gateway, same fake upstream, same run.

    .venv/bin/python scripts/bench/messages_overhead.py            # 3 rounds x 3 s windows per cell
    .venv/bin/python scripts/bench/messages_overhead.py --quick    # 1.5 s windows

One lean fake OpenAI upstream and one ``acore-gateway`` (its ``openai`` provider pointed at the
fake), both from scripts/bench/gateway_overhead.py, whose load driver this reuses. For each mode
(non-streaming; streaming with N chunks) and concurrency, the rounds alternate a window of
OpenAI chat requests and a window of the same request in Anthropic's shape (``max_tokens``,
``messages``; events back in Anthropic's sequence), and report medians: requests/s, p50
latency, the gateway's CPU per request, and /v1/messages over /v1/chat/completions (goal ≥ 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_overhead as overhead  # the sibling script: its fake, driver and helpers

from tests.procs import base_env, free_port

PROMPT = [{"role": "user", "content": "Say hello in a few words."}]


def messages_request(port: int, model: str, stream: bool) -> bytes:
    """The Anthropic twin of gateway_overhead.build_request."""
    body = orjson.dumps({"model": model, "stream": stream, "max_tokens": 64, "messages": PROMPT})
    return (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"anthropic-version: 2023-06-01\r\nx-api-key: bench\r\nContent-Length: %d\r\n\r\n" % (port, len(body))
            + body)


async def bench(options: argparse.Namespace, gateway_port: int, gateway_pid: int) -> list[overhead.Cell]:
    """Cells whose ``direct`` windows are /v1/chat/completions and ``through`` windows /v1/messages."""
    server = psutil.Process(gateway_pid)
    builders = [("chat", overhead.build_request), ("messages", messages_request)]
    cells = []
    for mode in ("plain", "stream"):
        for concurrency in options.concurrency:
            cell = overhead.Cell(mode, concurrency)
            cells.append(cell)
            for round_index in range(options.rounds):
                order = builders if round_index % 2 == 0 else builders[::-1]
                for name, build in order:
                    payload = build(gateway_port, "openai/bench", mode == "stream")
                    window = await overhead.run_window(gateway_port, payload, mode == "stream", concurrency,
                                                       options.seconds, server)
                    (cell.direct if name == "chat" else cell.through).append(window)
            print(f"  {mode:6} c={concurrency:<3} chat {overhead.med(cell.direct, lambda w: w.rps):8.0f} req/s   "
                  f"messages {overhead.med(cell.through, lambda w: w.rps):8.0f} req/s", file=sys.stderr)
    return cells


def report(cells: list[overhead.Cell], chunks: int) -> str:
    rows = ["| mode | c | chat req/s | messages req/s | messages / chat | paired ratio | chat p50 ms | messages p50 ms "
            "| chat CPU µs/req | messages CPU µs/req | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cpu(windows: list[overhead.Window]) -> float:
        requests = sum(len(w.latencies) for w in windows)
        return sum(w.cpu_s for w in windows) / requests * 1e6 if requests else float("nan")

    for cell in cells:
        chat_rps = overhead.med(cell.direct, lambda w: w.rps)
        messages_rps = overhead.med(cell.through, lambda w: w.rps)
        # Both doors ran back to back in each round: the ratio within a round cancels the machine's drift.
        paired = statistics.median(m.rps / c.rps for c, m in zip(cell.direct, cell.through, strict=True) if c.rps)
        chat50 = overhead.med(cell.direct, lambda w: overhead.pct(w.latencies, 0.5)) * 1000
        messages50 = overhead.med(cell.through, lambda w: overhead.pct(w.latencies, 0.5)) * 1000
        errors = sum(w.errors for w in cell.direct + cell.through)
        mode = "non-stream" if cell.mode == "plain" else f"stream ({chunks} chunks)"
        rows.append(f"| {mode} | {cell.concurrency} | {chat_rps:,.0f} | {messages_rps:,.0f} "
                    f"| {messages_rps / chat_rps:.2f} | {paired:.2f} | {chat50:.2f} | {messages50:.2f} "
                    f"| {cpu(cell.direct):.0f} | {cpu(cell.through):.0f} | {errors} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per streamed answer (default 50)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each timed window (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="chat/messages window pairs per cell (default 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--quick", action="store_true", help="1.5 s windows")
    parser.add_argument("--log-dir", default="/tmp", help="where the processes' logs go")
    options = parser.parse_args(argv)
    if options.quick:
        options.seconds = 1.5
    log_dir = Path(options.log_dir)
    fake_port, gateway_port = free_port(), free_port()
    fake = overhead.start([str(Path(overhead.__file__).resolve()), "--serve-fake", str(fake_port), "--chunks",
                           str(options.chunks)], base_env(), fake_port, "/v1/models", log_dir / "bench-fake.log")
    gateway_env = base_env({"OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1", "OPENAI_API_KEY": "sk-bench"})
    gateway = overhead.start(["-m", "gateway", "--port", str(gateway_port), "--no-default-embeddings"], gateway_env,
                             gateway_port, "/health", log_dir / "bench-gateway.log")
    try:
        started = time.monotonic()
        cells = asyncio.run(bench(options, gateway_port, gateway.pid))
        took = time.monotonic() - started
    finally:
        for process in (gateway, fake):
            process.send_signal(2)
            try:
                process.wait(10)
            except Exception:
                process.kill()
    load = os.getloadavg()
    print(f"\n{os.cpu_count()} CPUs, load average {load[0]:.1f}; {options.rounds} rounds x {options.seconds:g} s "
          f"windows per door and cell; medians of the rounds; run took {took:.0f} s.\n")
    print(report(cells, options.chunks))


if __name__ == "__main__":
    main()
