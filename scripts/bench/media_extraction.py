#!/usr/bin/env python
"""Gateway responsiveness while attachments are extracted, and PDF extraction speed.

    .venv/bin/python scripts/bench/media_extraction.py [--rounds 3] [--seconds 6] [--extractors 2]

A real gateway and the fake OpenAI upstream on 127.0.0.1. A ~10 MB PDF (text pages plus one
incompressible image) and a ~10 MB XLSX (random strings) are generated into a temporary media root.
Each round has an idle phase and a load phase of the same length; in both, probes run:
- /health: 4 concurrent loops, latency of each GET;
- streaming chat: one loop of `openai/words-20` streams through the gateway, total time per stream.
In the load phase `--extractors` clients loop on chat requests naming `@big.pdf` / `@big.xlsx`
(alternating), so extraction runs the whole time. Phases alternate (the box is shared and noisy) and
the median over rounds of each percentile is reported. Goal (issue 7): p99 /health during extraction
≤ 2× idle. PDF pages/s = pages / wall time of one PDF attachment request, median.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests.procs import start_fake_openai, start_gateway  # noqa: E402

TARGET = 10 * 1000 * 1000  # ~10 MB, under the 10 MiB per-file cap


def _pdf(pages: int, side: int) -> bytes:
    from fpdf import FPDF
    from PIL import Image

    rng = random.Random(7)
    words = ["alpha", "budget", "cache", "delta", "engine", "forecast", "gateway", "harbor", "index", "jitter"]
    pdf = FPDF()
    pdf.set_font("helvetica", size=9)
    for number in range(pages):
        pdf.add_page()
        text = " ".join(rng.choice(words) for _ in range(70))  # 300 pages stay under the 200k-char cap
        pdf.multi_cell(0, 4, f"Page {number + 1}. {text}")
    if side:
        # One page with an incompressible image brings the file to ~10 MB (file size, not page count).
        noise = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        buffer = io.BytesIO()
        noise.save(buffer, format="PNG", compress_level=1)
        pdf.add_page()
        pdf.image(buffer, x=10, y=10, w=100)
    return bytes(pdf.output())


def make_pdf(pages: int) -> bytes:
    base = len(_pdf(pages, 0))
    side = int(((TARGET - base) / 3) ** 0.5)
    return _pdf(pages, side)


def make_xlsx() -> bytes:
    import openpyxl

    rng = random.Random(11)
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("Data")
    sheet.append([f"col{i}" for i in range(8)])
    out = io.BytesIO()
    rows = 0
    while True:
        for _ in range(5000):
            sheet.append([rng.randbytes(12).hex() for _ in range(8)])
        rows += 5000
        if rows * 8 * 21 >= TARGET:  # ~21 compressed bytes per random 24-hex-char cell
            break
    workbook.save(out)
    return out.getvalue()


def in_process_pdf_rate(pdf: bytes, pages: int) -> str:
    """Reference: the same extraction called directly, one process, no gateway."""
    from media.extract import extract
    from media.policy import MediaPolicy

    started = time.perf_counter()
    result = extract(pdf, "big.pdf", "application/pdf", MediaPolicy())
    elapsed = time.perf_counter() - started
    assert result.text is not None and f"[Page {pages}]" in result.text, "the PDF was cut before its last page"
    return f"in-process PDF extraction: {pages} pages in {elapsed:.2f}s → {pages / elapsed:.0f} pages/s"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def health_loop(session: aiohttp.ClientSession, url: str, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        async with session.get(url + "/health") as response:
            await response.read()
        out.append(time.perf_counter() - start)
        await asyncio.sleep(0.01)


async def stream_loop(session: aiohttp.ClientSession, url: str, stop: asyncio.Event, out: list[float]) -> None:
    body = {"model": "openai/words-20", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    while not stop.is_set():
        start = time.perf_counter()
        async with session.post(url + "/v1/chat/completions", json=body) as response:
            async for _ in response.content:
                pass
        out.append(time.perf_counter() - start)
        await asyncio.sleep(0.02)


async def extract_loop(session: aiohttp.ClientSession, url: str, stop: asyncio.Event, index: int,
                       pdf_times: list[float], errors: list[str]) -> None:
    turn = index
    while not stop.is_set():
        name = "big.pdf" if turn % 2 == 0 else "big.xlsx"
        turn += 1
        body = {"model": "openai/words-1", "stream": True,
                "messages": [{"role": "user", "content": f"Summarise @{name}"}]}
        start = time.perf_counter()
        async with session.post(url + "/v1/chat/completions", json=body) as response:
            payload = await response.read()
            if response.status != 200:
                errors.append(f"{name}: {response.status} {payload[:200]!r}")
        if name == "big.pdf":
            pdf_times.append(time.perf_counter() - start)


async def phase(url: str, seconds: float, extractors: int, pdf_times: list[float],
                errors: list[str]) -> tuple[list[float], list[float]]:
    health: list[float] = []
    streams: list[float] = []
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(health_loop(session, url, stop, health)) for _ in range(4)]
        tasks.append(asyncio.create_task(stream_loop(session, url, stop, streams)))
        tasks += [asyncio.create_task(extract_loop(session, url, stop, i, pdf_times, errors)) for i in range(extractors)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    return health, streams


async def main_async(args: argparse.Namespace, url: str, pages: int) -> None:
    rows: dict[str, list[float]] = {}
    pdf_times: list[float] = []
    errors: list[str] = []
    await phase(url, 1.0, 0, [], errors)  # warm-up: connections, first imports
    for _ in range(args.rounds):
        for label, extractors in (("idle", 0), ("load", args.extractors)):
            health, streams = await phase(url, args.seconds, extractors, pdf_times, errors)
            for name, values in (("health", health), ("stream", streams)):
                rows.setdefault(f"{name} p50 {label}", []).append(pct(values, 0.50) * 1000)
                rows.setdefault(f"{name} p99 {label}", []).append(pct(values, 0.99) * 1000)
    if errors:
        print("errors:", *errors[:5], sep="\n  ")

    def med(key: str) -> float:
        return statistics.median(rows[key])

    print(f"\nrounds={args.rounds} phase={args.seconds:g}s extractors={args.extractors} cpus={os.cpu_count()}\n")
    print("| metric | idle (ms) | during extraction (ms) | ratio |")
    print("|---|---:|---:|---:|")
    for name in ("health", "stream"):
        for q in ("p50", "p99"):
            idle, load = med(f"{name} {q} idle"), med(f"{name} {q} load")
            label = "/health" if name == "health" else "streaming chat (20 chunks, total)"
            print(f"| {label} {q} | {idle:.2f} | {load:.2f} | {load / idle:.2f}× |")
    if pdf_times:
        per = statistics.median(pdf_times)
        print(f"\nPDF: {pages} text pages (+1 image page), median request {per:.2f}s over {len(pdf_times)} "
              f"requests under load → {pages / per:.0f} pages/s (extraction + request overhead, 2 parse children)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--extractors", type=int, default=2)
    parser.add_argument("--pages", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "media"
        root.mkdir()
        started = time.perf_counter()
        cache = ROOT / ".cache" / "bench" / "media"  # git-ignored; generation takes a minute
        cache.mkdir(parents=True, exist_ok=True)
        pdf_path, xlsx_path = cache / f"big-{args.pages}.pdf", cache / "big.xlsx"
        if not pdf_path.exists():
            pdf_path.write_bytes(make_pdf(args.pages))
        if not xlsx_path.exists():
            xlsx_path.write_bytes(make_xlsx())
        pdf, xlsx = pdf_path.read_bytes(), xlsx_path.read_bytes()
        print(in_process_pdf_rate(pdf, args.pages))
        (root / "big.pdf").write_bytes(pdf)
        (root / "big.xlsx").write_bytes(xlsx)
        print(f"generated big.pdf {len(pdf) / 1e6:.1f} MB, big.xlsx {len(xlsx) / 1e6:.1f} MB "
              f"in {time.perf_counter() - started:.1f}s")
        logs = Path(tmp) / "logs"
        logs.mkdir()
        upstream = start_fake_openai(logs)
        gateway = None
        try:
            gateway = start_gateway(logs, {"OPENAI_BASE_URL": upstream.url + "/v1", "OPENAI_API_KEY": "sk-bench",
                                           "ACORE_MEDIA_ROOTS": str(root)})
            asyncio.run(main_async(args, gateway.url, args.pages))
        finally:
            if gateway is not None:
                gateway.stop()
            upstream.stop()


if __name__ == "__main__":
    main()
