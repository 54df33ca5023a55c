"""Gateway memory for large request bodies: peak RSS while 20 clients each send a 30 MB chat body.

    git worktree add /work/before21 HEAD     # the code before issue 21 (once)
    .venv/bin/python scripts/bench/body_memory.py --baseline /work/before21
    .venv/bin/python scripts/bench/body_memory.py --rounds 1 --clients 10   # quicker

Each round starts, for each variant in turn, a fresh fake OpenAI upstream (tests/fakes) and a
fresh gateway on 127.0.0.1, reads the gateway's RSS at rest, sends ``--clients`` concurrent
non-streaming requests of ``--body-mb`` MB each (one user message; the fake answers with a short
tool call, so no answer is as large as the body), samples the gateway's RSS every 5 ms and
reports the growth from rest to peak. Variants: the ``--baseline`` checkout, this checkout with
its default budget (1/8 of the RAM: every body fits, so this measures the copies a body costs),
and this checkout with a 256 MiB budget (``ACORE_MAX_INFLIGHT_BYTES``: the bound under load,
the rest answered 503). Medians over the rounds; the ratio is against the baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.procs import Proc, free_port, start  # noqa: E402 - after the path set-up above


def start_pair(checkout: Path, log_dir: Path, extra_env: dict[str, str]) -> tuple[Proc, Proc]:
    fake_port = free_port()
    fake = start(["-m", "tests.fakes.openai_upstream", "--port", str(fake_port)], port=fake_port, log_dir=log_dir,
                 name="bench-fake", ready_path="/v1/models", env={"PYTHONPATH": str(checkout)}, cwd=checkout)
    port = free_port()
    env = {"PYTHONPATH": str(checkout), "OPENAI_BASE_URL": fake.url + "/v1", "OPENAI_API_KEY": "sk-bench",
           "ACORE_ACCESS_LOG": "0", "ACORE_LOG_DIR": str(log_dir / "logs"), **extra_env}
    gateway = start(["-m", "gateway", "--port", str(port), "--no-default-embeddings"], port=port, log_dir=log_dir,
                    name="bench-gateway", env=env, cwd=checkout, timeout=60)
    return fake, gateway


def send(url: str, body: bytes, statuses: list[int]) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            answer.read()
            statuses.append(answer.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        statuses.append(exc.code)
    except OSError:
        statuses.append(0)  # the gateway answered (503) and closed while the body was still going out


def measure(checkout: Path, log_dir: Path, extra_env: dict[str, str], clients: int, body: bytes) -> dict[str, float]:
    fake, gateway = start_pair(checkout, log_dir, extra_env)
    try:
        process = psutil.Process(gateway.process.pid)
        time.sleep(0.5)
        rest = process.memory_info().rss
        peak = [rest]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        statuses: list[int] = []
        started = time.perf_counter()
        threads = [threading.Thread(target=send, args=(gateway.url + "/v1/chat/completions", body, statuses))
                   for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
        counts = Counter(statuses)
        return {"rest_mb": rest / 2**20, "peak_mb": peak[0] / 2**20, "growth_mb": (peak[0] - rest) / 2**20,
                "ok": counts.get(200, 0), "busy": counts.get(503, 0) + counts.get(0, 0), "seconds": elapsed}
    finally:
        gateway.stop()
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="CHECKOUT", help="the checkout to compare with (e.g. /work/before21)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--body-mb", type=int, default=30)
    options = parser.parse_args()
    content = "x" * (options.body_mb << 20)
    body = json.dumps({"model": "openai/tool", "messages": [{"role": "user", "content": content}]}).encode()
    variants: list[tuple[str, Path, dict[str, str]]] = []
    if options.baseline:
        variants.append(("baseline (" + Path(options.baseline).name + ")", Path(options.baseline).resolve(), {}))
    variants.append(("acore, default budget", REPO, {}))
    variants.append(("acore, 256 MiB budget", REPO, {"ACORE_MAX_INFLIGHT_BYTES": str(256 << 20)}))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(options.rounds):
            for name, checkout, extra in variants:
                result = measure(checkout, Path(tmp), extra, options.clients, body)
                results[name].append(result)
                print(f"round {round_index + 1} {name}: {json.dumps({k: round(v, 1) for k, v in result.items()})}",
                      file=sys.stderr)
    first = variants[0][0]
    base = statistics.median(r["growth_mb"] for r in results[first])
    print(f"\n{options.clients} concurrent requests x {options.body_mb} MB body, {options.rounds} rounds "
          f"(medians); {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; "
          f"whole run {time.perf_counter() - started:.0f} s\n")
    print("| gateway | RSS at rest MB | peak RSS MB | growth MB | growth per body MB | vs first row | 200 | 503 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, _, _ in variants:
        rows = results[name]
        growth = statistics.median(r["growth_mb"] for r in rows)
        ok = statistics.median(r["ok"] for r in rows)
        print(f"| {name} | {statistics.median(r['rest_mb'] for r in rows):.0f} "
              f"| {statistics.median(r['peak_mb'] for r in rows):.0f} | {growth:.0f} "
              f"| {growth / max(ok, 1):.0f} | {growth / base:.2f}× | {ok:.0f} "
              f"| {statistics.median(r['busy'] for r in rows):.0f} |")


if __name__ == "__main__":
    main()
