"""Gateway overhead: the same load straight to a fast fake upstream and through acore.

    .venv/bin/python scripts/bench/gateway_overhead.py            # full run (~2-3 minutes)
    .venv/bin/python scripts/bench/gateway_overhead.py --quick    # shorter windows
    git worktree add /tmp/acore-before HEAD~1 && \
      .venv/bin/python scripts/bench/gateway_overhead.py --baseline /tmp/acore-before   # vs the commit before
    .venv/bin/python scripts/bench/gateway_overhead.py --compare-args "--no-access-log --no-metrics"
                                                  # this gateway vs itself with those flags (issue 16's cost)

Three processes on 127.0.0.1: a lean fake OpenAI upstream (a raw asyncio protocol with
prebuilt answers, far faster than the gateway, so it is never the bottleneck; its own
ceiling is the "direct" column), ``acore-gateway`` pointing its ``openai`` provider at it,
and this script as the load driver (a minimal keep-alive HTTP/1.1 client on asyncio
streams: an aiohttp ClientSession costs the driver more CPU than the gateway spends).

For each mode (non-streaming; streaming with N chunks) and concurrency (1, 16, 64) the
driver alternates direct and gateway windows (interleaved, so drift in machine load hits
both) and reports medians over the rounds: requests/s, p50/p99 latency, time to first
chunk (TTFC), the added latency and the throughput ratio, and the gateway's CPU time
(psutil user+system of its process) per request and per streamed chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.procs import base_env, free_port, wait_http  # noqa: E402 - after the path set-up above

# ---------------------------------------------------------------------------- the lean fake upstream


def _fake_answers(chunks: int) -> tuple[bytes, bytes, bytes]:
    completion = orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from the fake upstream"},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
    })
    plain = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(completion)
             + completion)

    def event(delta: dict[str, str], finish: str | None) -> bytes:
        data = b"data: " + orjson.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"
        return b"%x\r\n" % len(data) + data + b"\r\n"

    # One chunked-encoding chunk per SSE event, as real servers send them.
    body = event({"role": "assistant", "content": ""}, None)
    body += b"".join(event({"content": "tok "}, None) for _ in range(chunks))
    body += event({}, "stop") + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
    streamed = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    models = orjson.dumps({"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "bench"}]})
    listing = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(models) + models
    return plain, streamed, listing


class FakeUpstream(asyncio.Protocol):
    """Keep-alive HTTP/1.1 with Content-Length bodies only: enough for a gateway and this driver."""

    answers: tuple[bytes, bytes, bytes]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            plain, streamed, listing = self.answers
            if head.startswith(b"get"):
                self.transport.write(listing)
            elif b'"stream":true' in body or b'"stream": true' in body:
                self.transport.write(streamed)
            else:
                self.transport.write(plain)


def serve_fake(port: int, chunks: int) -> None:
    FakeUpstream.answers = _fake_answers(chunks)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(FakeUpstream, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ---------------------------------------------------------------------------- the load driver


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)
    ttfc: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    cpu_s: float = 0.0  # CPU (user+system) of the measured server: the fake upstream or the gateway
    sys_s: float = 0.0  # of which in the kernel (socket writes on loopback run the whole TCP path)
    events: int = 0  # SSE data events received

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(reader, writer)

    async def request(self, payload: bytes, stream: bool) -> tuple[float, float, int]:
        """Send one request; return (total seconds, seconds to the first SSE event, events)."""
        started = time.perf_counter()
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head[:200].decode(errors="replace"))
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            first = 0.0
            events = 0
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await self.reader.readexactly(2)
                    break
                data = await self.reader.readexactly(size + 2)
                if not first:
                    first = time.perf_counter() - started
                events += data.count(b"data: ")
            return time.perf_counter() - started, first, events
        at = lower.find(b"content-length:")
        length = int(lower[at + 15:lower.find(b"\r\n", at)])
        await self.reader.readexactly(length)
        elapsed = time.perf_counter() - started
        return elapsed, elapsed, 0


def build_request(port: int, model: str, stream: bool) -> bytes:
    body = orjson.dumps({"model": model, "stream": stream, "max_tokens": 64,
                         "messages": [{"role": "user", "content": "Say hello in a few words."}]})
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer bench\r\nContent-Length: %d\r\n\r\n" % (port, len(body)) + body)


def tree_cpu(server: psutil.Process) -> tuple[float, float]:
    """User and system CPU seconds of a server and its live children (the fronts of --processes N)."""
    user = system = 0.0
    for process in [server, *server.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        user, system = user + times.user, system + times.system
    return user, system


async def run_window(port: int, payload: bytes, stream: bool, concurrency: int, seconds: float,
                     server: psutil.Process) -> Window:
    window = Window()
    connections = [await Connection.open(port) for _ in range(concurrency)]
    # one untimed request per connection: connections, pools and caches are warm before timing
    await asyncio.gather(*(c.request(payload, stream) for c in connections))
    stop_at = 0.0

    async def worker(connection: Connection) -> None:
        while time.perf_counter() < stop_at:
            try:
                total, first, events = await connection.request(payload, stream)
            except (RuntimeError, asyncio.IncompleteReadError, ConnectionError) as exc:
                window.errors += 1
                if window.errors == 1:
                    print(f"  request failed: {exc}", file=sys.stderr)
                return
            window.latencies.append(total)
            window.ttfc.append(first)
            window.events += events

    before = tree_cpu(server)
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(worker(c) for c in connections))
    window.elapsed = time.perf_counter() - started
    after = tree_cpu(server)
    window.cpu_s = after[0] + after[1] - before[0] - before[1]
    window.sys_s = after[1] - before[1]
    for connection in connections:
        connection.writer.close()
    return window


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Cell:
    mode: str
    concurrency: int
    direct: list[Window] = field(default_factory=list)
    through: list[Window] = field(default_factory=list)
    baseline: list[Window] = field(default_factory=list)  # --baseline: the same gateway from another checkout


def med(windows: list[Window], metric: Callable[[Window], float]) -> float:
    return statistics.median(metric(w) for w in windows)


def report(cells: list[Cell], chunks: int) -> str:
    ms = 1000.0
    rows = ["| mode | c | direct req/s | acore req/s | ratio | direct p50 ms | added p50 ms | added p99 ms "
            "| added TTFC p50 ms | fake CPU µs/req | acore CPU µs/req (kernel) | acore CPU µs/event | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in cells:
        d_rps, a_rps = med(cell.direct, lambda w: w.rps), med(cell.through, lambda w: w.rps)
        d50 = med(cell.direct, lambda w: pct(w.latencies, 0.5))
        a50 = med(cell.through, lambda w: pct(w.latencies, 0.5))
        d99 = med(cell.direct, lambda w: pct(w.latencies, 0.99))
        a99 = med(cell.through, lambda w: pct(w.latencies, 0.99))
        requests = sum(len(w.latencies) for w in cell.through)
        cpu = sum(w.cpu_s for w in cell.through)
        per_request = cpu / requests * 1e6 if requests else float("nan")
        kernel = sum(w.sys_s for w in cell.through) / requests * 1e6 if requests else float("nan")
        fake_requests = sum(len(w.latencies) for w in cell.direct)
        fake_cpu = sum(w.cpu_s for w in cell.direct) / fake_requests * 1e6 if fake_requests else float("nan")
        if cell.mode == "stream":
            dt = med(cell.direct, lambda w: pct(w.ttfc, 0.5))
            at = med(cell.through, lambda w: pct(w.ttfc, 0.5))
            events = sum(w.events for w in cell.through)
            ttfc = f"{(at - dt) * ms:+.2f}"
            per_chunk = f"{cpu / events * 1e6:.1f}" if events else "n/a"
        else:
            ttfc, per_chunk = "–", "–"
        errors = sum(w.errors for w in cell.direct + cell.through)
        mode = "non-stream" if cell.mode == "plain" else f"stream ({chunks} chunks)"
        rows.append(f"| {mode} | {cell.concurrency} | {d_rps:,.0f} | {a_rps:,.0f} | {a_rps / d_rps:.2f} "
                    f"| {d50 * ms:.2f} | {(a50 - d50) * ms:+.2f} | {(a99 - d99) * ms:+.2f} | {ttfc} "
                    f"| {fake_cpu:.0f} | {per_request:.0f} ({kernel:.0f}) | {per_chunk} | {errors} |")
    return "\n".join(rows)


def comparison(cells: list[Cell], chunks: int) -> str:
    """acore vs the --baseline checkout, measured in the same interleaved rounds."""
    ms = 1000.0
    rows = ["| mode | c | baseline req/s | acore req/s | acore / baseline | paired ratio (median of rounds) "
            "| baseline added p50 ms | acore added p50 ms | baseline CPU µs/req | acore CPU µs/req |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in cells:
        b_rps, a_rps = med(cell.baseline, lambda w: w.rps), med(cell.through, lambda w: w.rps)
        d50 = med(cell.direct, lambda w: pct(w.latencies, 0.5))
        b50 = med(cell.baseline, lambda w: pct(w.latencies, 0.5))
        a50 = med(cell.through, lambda w: pct(w.latencies, 0.5))

        def cpu(windows: list[Window]) -> float:
            requests = sum(len(w.latencies) for w in windows)
            return sum(w.cpu_s for w in windows) / requests * 1e6 if requests else float("nan")

        # Each round ran both gateways back to back: the ratio within a round cancels slow drift of the machine.
        paired = statistics.median(a.rps / b.rps for a, b in zip(cell.through, cell.baseline, strict=True) if b.rps)
        mode = "non-stream" if cell.mode == "plain" else f"stream ({chunks} chunks)"
        rows.append(f"| {mode} | {cell.concurrency} | {b_rps:,.0f} | {a_rps:,.0f} | {a_rps / b_rps:.2f} | {paired:.2f} "
                    f"| {(b50 - d50) * ms:+.2f} | {(a50 - d50) * ms:+.2f} | {cpu(cell.baseline):.0f} "
                    f"| {cpu(cell.through):.0f} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------- orchestration


def start(args: list[str], env: dict[str, str], port: int, path: str, log: Path,
          cwd: Path = REPO) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        process = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}{path}", process, 60, log)
    return process


async def bench(options: argparse.Namespace, fake_port: int, gateway_port: int, fake_pid: int,
                gateway_pid: int, baseline: tuple[int, int] | None = None) -> list[Cell]:
    servers = {"direct": psutil.Process(fake_pid), "through": psutil.Process(gateway_pid)}
    cells: list[Cell] = []
    targets: list[tuple[str, int, str]] = [("direct", fake_port, "bench"), ("through", gateway_port, "openai/bench")]
    if baseline is not None:
        servers["baseline"] = psutil.Process(baseline[1])
        targets.append(("baseline", baseline[0], "openai/bench"))
    for mode in ("plain", "stream"):
        for concurrency in options.concurrency:
            cell = Cell(mode, concurrency)
            cells.append(cell)
            for _round in range(options.rounds):
                # alternate which side goes first, so neither always runs on a "cooler" machine
                order = targets if _round % 2 == 0 else targets[::-1]
                for name, port, model in order:
                    payload = build_request(port, model, mode == "stream")
                    window = await run_window(port, payload, mode == "stream", concurrency, options.seconds,
                                              servers[name])
                    {"direct": cell.direct, "through": cell.through, "baseline": cell.baseline}[name].append(window)
            print(f"  {mode:6} c={concurrency:<3} direct {med(cell.direct, lambda w: w.rps):8.0f} req/s   "
                  f"acore {med(cell.through, lambda w: w.rps):8.0f} req/s", file=sys.stderr)
    return cells


def profile_format(path: str) -> str:
    return {".txt": "raw", ".svg": "flamegraph"}.get(Path(path).suffix, "speedscope")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-fake", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per streamed answer (default 50)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each timed window (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="direct/acore window pairs per cell (default 2)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--quick", action="store_true", help="1.5 s windows")
    parser.add_argument("--gateway-args", default="", help="extra acore-gateway arguments")
    parser.add_argument("--profile", metavar="OUT",
                        help="record the gateway with py-spy into OUT (.txt: collapsed stacks, .svg: flame graph, "
                             "else speedscope JSON)")
    parser.add_argument("--log-dir", default="/tmp", help="where the processes' logs go")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="also run the gateway of another checkout (e.g. a git worktree of the commit before) in "
                             "the same interleaved rounds, and report acore / baseline")
    parser.add_argument("--compare-args", metavar="ARGS", default=None,
                        help="also run this checkout's gateway with these extra arguments as the baseline, in the same "
                             "interleaved rounds (e.g. \"--no-access-log --no-metrics\": what observability costs)")
    parser.add_argument("--compare-env", metavar="NAME=VALUE", action="append", default=[],
                        help="environment of the --compare-args gateway (repeatable), e.g. ACORE_METRICS=0")
    options = parser.parse_args(argv)
    if options.serve_fake:
        serve_fake(options.serve_fake, options.chunks)
        return
    if options.quick:
        options.seconds = 1.5

    log_dir = Path(options.log_dir)
    fake_port, gateway_port = free_port(), free_port()
    env = base_env()
    fake = start([str(Path(__file__).resolve()), "--serve-fake", str(fake_port), "--chunks", str(options.chunks)],
                 env, fake_port, "/v1/models", log_dir / "bench-fake.log")
    gateway_env = base_env({"OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1", "OPENAI_API_KEY": "sk-bench"})
    gateway = start(["-m", "gateway", "--port", str(gateway_port), "--no-default-embeddings",
                     *options.gateway_args.split()], gateway_env, gateway_port, "/health", log_dir / "bench-gateway.log")
    baseline = None
    if options.baseline and options.compare_args is not None:
        parser.error("--baseline and --compare-args each name the baseline: give one")
    if options.baseline:
        checkout = Path(options.baseline).resolve()
        baseline_port = free_port()
        baseline_env = {**gateway_env, "PYTHONPATH": str(checkout)}
        baseline = start(["-m", "gateway", "--port", str(baseline_port), "--no-default-embeddings",
                          *options.gateway_args.split()], baseline_env, baseline_port, "/health",
                         log_dir / "bench-baseline.log", cwd=checkout)
    elif options.compare_args is not None or options.compare_env:
        baseline_port = free_port()
        extra_env = dict(item.split("=", 1) for item in options.compare_env)
        baseline = start(["-m", "gateway", "--port", str(baseline_port), "--no-default-embeddings",
                          *options.gateway_args.split(), *(options.compare_args or "").split()],
                         {**gateway_env, **extra_env}, baseline_port, "/health", log_dir / "bench-baseline.log")
    profiler = None
    try:
        if options.profile:
            profiler = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                         str(gateway.pid), "--format", profile_format(options.profile),
                                         "-o", options.profile,
                                         "--rate", "250", "--nonblocking"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.monotonic()
        cells = asyncio.run(bench(options, fake_port, gateway_port, fake.pid, gateway.pid,
                                  (baseline_port, baseline.pid) if baseline is not None else None))
        took = time.monotonic() - started
    finally:
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(30)
        for process in (gateway, fake, *([baseline] if baseline is not None else [])):
            process.send_signal(2)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
    load = os.getloadavg()
    print(f"\n{os.cpu_count()} CPUs, load average {load[0]:.1f}; {options.rounds} rounds x {options.seconds:g} s "
          f"windows per side and cell; medians of the rounds; run took {took:.0f} s.\n")
    print(report(cells, options.chunks))
    if baseline is not None:
        other = options.baseline or " ".join(["this gateway with", options.compare_args or "", *options.compare_env])
        print(f"\nSide by side with {other.strip()} as the baseline (same rounds):\n")
        print(comparison(cells, options.chunks))


if __name__ == "__main__":
    main()
