"""Python function calls per gateway request: a deterministic twin of the timed overhead benchmark.

    .venv/bin/python scripts/bench/request_calls.py                       # this checkout
    .venv/bin/python scripts/bench/request_calls.py --baseline /tmp/acore-before   # and another, side by side

The machine here is shared and its timings drift by ±10 % between runs; the number of Python
calls the gateway makes per request does not. For each checkout this runs its ``create_app``
in a fresh process against the lean fake upstream of gateway_overhead.py, warms up, then counts
(cProfile) the calls made while serving N sequential requests over one keep-alive connection,
non-streaming and streamed (50 chunks). ``--top`` lists the functions whose count differs most.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
_PACKAGE_PATH = re.compile(r"^.*?/(gateway|protocol|aiohttp|asyncio|multidict|yarl)/")
REPO = HERE.parents[2]


def measure(checkout: Path, stream: bool, requests: int) -> dict[str, float]:
    """Run in a child process: calls per request, by function (``total`` for all of them)."""
    out = subprocess.run([sys.executable, str(HERE), "--child", str(checkout), "--requests", str(requests),
                          *(["--stream"] if stream else [])], capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def child(checkout: Path, stream: bool, requests: int) -> None:
    sys.path.insert(0, str(checkout))
    os.chdir(checkout)
    from tests.procs import base_env, free_port, wait_http

    fake_port = free_port()
    fake = subprocess.Popen([sys.executable, str(REPO / "scripts/bench/gateway_overhead.py"), "--serve-fake",
                             str(fake_port), "--chunks", "50"], env=base_env(), stdout=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{fake_port}/v1/models", fake, 30)
        counts = asyncio.run(_serve_and_count(fake_port, stream, requests))
    finally:
        fake.kill()
        fake.wait()
    print(json.dumps(counts))


async def _serve_and_count(fake_port: int, stream: bool, requests: int) -> dict[str, float]:
    import orjson
    from aiohttp import web

    from gateway.app import create_app
    from gateway.config import load_config
    from tests.procs import free_port

    config = load_config(env={"OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1", "OPENAI_API_KEY": "sk-bench"},
                         overrides={"default_embeddings": False})
    runner = web.AppRunner(create_app(config), handler_cancellation=True, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    body = orjson.dumps({"model": "openai/bench", "stream": stream, "max_tokens": 64,
                         "messages": [{"role": "user", "content": "Say hello in a few words."}]})
    payload = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def one() -> None:
        writer.write(payload)
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        if b"transfer-encoding: chunked" in head:
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            await reader.readexactly(2)
        else:
            at = head.find(b"content-length:")
            await reader.readexactly(int(head[at + 15:head.find(b"\r\n", at)]))

    for _ in range(50):
        await one()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(requests):
        await one()
    profile.disable()
    writer.close()
    await runner.cleanup()
    stats = pstats.Stats(profile)
    counts: dict[str, float] = {"total": stats.total_calls / requests}  # type: ignore[attr-defined]
    for (path, _line, name), (_cc, calls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        short = _PACKAGE_PATH.sub(r"\1/", path)  # the same module in either checkout gets the same key
        key = f"{short}:{name}"
        counts[key] = counts.get(key, 0.0) + calls / requests
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="CHECKOUT", help="another checkout to count side by side")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--top", type=int, default=0, help="list the N functions whose counts differ most")
    parser.add_argument("--child", metavar="CHECKOUT", help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        child(Path(options.child), options.stream, options.requests)
        return
    print("| request | " + ("baseline calls | " if options.baseline else "") + "acore calls |"
          + (" acore − baseline |" if options.baseline else ""))
    print("|---|" + ("---:|" * (3 if options.baseline else 1)))
    for stream in (False, True):
        ours = measure(REPO, stream, options.requests)
        label = "streamed (50 chunks)" if stream else "non-streaming"
        if not options.baseline:
            print(f"| {label} | {ours['total']:.0f} |")
            continue
        theirs = measure(Path(options.baseline).resolve(), stream, options.requests)
        print(f"| {label} | {theirs['total']:.0f} | {ours['total']:.0f} | {ours['total'] - theirs['total']:+.0f} |")
        if options.top:
            keys = set(ours) | set(theirs)
            diffs = sorted(((ours.get(k, 0) - theirs.get(k, 0), k) for k in keys if k != "total"),
                           key=lambda d: -abs(d[0]))[:options.top]
            for diff, key in diffs:
                print(f"|   {key} | {theirs.get(key, 0):.1f} | {ours.get(key, 0):.1f} | {diff:+.1f} |")


if __name__ == "__main__":
    main()
