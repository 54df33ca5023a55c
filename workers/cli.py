"""``acore-worker`` (also ``python -m workers``): load one model, serve it to one or more gateways."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import secrets
import sys
import time
from typing import Any

from protocol.endpoints import default_worker_endpoint
from protocol.local import (
    EXIT_LOAD_FAILED,
    SUPERVISOR_ENV,
    TEST_BACKENDS_ENV,
    WORKER_PROVIDERS,
    default_name,
    resolve_engine,
)
from workers.backend import BACKENDS, Backend, ModelLoadError

# Test-only backends: accepted solely with ACORE_TEST_BACKENDS=1, so a deployment never exposes them.
TEST_BACKENDS = {"echo": "tests.fakes.echo_backend:EchoBackend"}

log = logging.getLogger("acore.worker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    test_backends = os.environ.get(TEST_BACKENDS_ENV) == "1"
    choices = [*WORKER_PROVIDERS, *TEST_BACKENDS] if test_backends else list(WORKER_PROVIDERS)
    parser = argparse.ArgumentParser(
        prog="acore-worker",
        description="Load one local model once and serve it to acore gateways over ZeroMQ.",
    )
    parser.add_argument("--provider", required=True, choices=choices,
                        help="model engine; huggingface = llamacpp for a .gguf file, else sentence-transformers")
    parser.add_argument("--model", required=True, metavar="PATH_OR_ID", help="GGUF file, MLX directory or model id")
    parser.add_argument("--name", help="serve the model under this name (default: file stem, directory name or id)")
    parser.add_argument("--n-ctx", type=int, help="context window in tokens (default: the model's, capped)")
    parser.add_argument("--threads", type=int, help="CPU threads for the model")
    parser.add_argument("--connect", action="append", metavar="ENDPOINT", default=[],
                        help="gateway worker endpoint (repeatable; default: the ipc:// endpoint of port 8000)")
    parser.add_argument("--prompt-cache-bytes", type=int, metavar="N",
                        help="host-memory budget of the prompt cache in bytes (llamacpp, mlx; default 512 MiB)")
    parser.add_argument("--prompt-cache-ttl-s", type=float, metavar="S",
                        help="drop prompt-cache entries unused for this long (default: no TTL)")
    parser.add_argument("--max-batch", type=int, default=64, help="most embedding inputs per batch (default 64)")
    parser.add_argument("--batch-wait-ms", type=float, default=3.0,
                        help="how long to wait for more embedding requests to batch (default 3 ms)")
    return parser.parse_args(argv)


def load_backend_class(provider: str) -> type[Backend]:
    target = BACKENDS.get(provider)
    if target is None and os.environ.get(TEST_BACKENDS_ENV) == "1":
        target = TEST_BACKENDS.get(provider)
    if target is None:
        raise ModelLoadError(f"unknown provider {provider!r}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"the {provider} backend cannot be imported: {exc}") from None
    cls: type[Backend] = getattr(module, class_name)
    return cls


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s acore-worker %(message)s")
    args = parse_args(argv)
    provider = resolve_engine(args.provider, args.model)
    name = args.name or default_name(provider, args.model)
    options: dict[str, Any] = {"n_ctx": args.n_ctx, "threads": args.threads}
    if args.prompt_cache_bytes is not None:
        options["prompt_cache_bytes"] = args.prompt_cache_bytes
    if args.prompt_cache_ttl_s is not None:
        options["prompt_cache_ttl_s"] = args.prompt_cache_ttl_s
    supervisor = os.environ.get(SUPERVISOR_ENV)
    parent_pid = int(supervisor) if supervisor and supervisor.isdigit() else None
    if parent_pid is not None:
        from workers.loop import die_with_parent

        die_with_parent()
        if os.getppid() != parent_pid:  # the gateway died before prctl took effect
            raise SystemExit(1)
    try:
        backend = load_backend_class(provider)(args.model, name, options)
        log.info("loading %s ...", args.model)
        started = time.monotonic()
        backend.load()
    except ModelLoadError as exc:
        print(f"acore-worker: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_LOAD_FAILED) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    log.info("loaded %s in %.2f s", name, time.monotonic() - started)

    from workers.loop import WorkerLoop, install_signal_handlers

    endpoints = args.connect or [default_worker_endpoint(8000)]
    # Identity: unique per process so a restarted worker is never mistaken for its predecessor.
    worker_id = f"{name[-80:]}-{os.getpid()}-{secrets.token_hex(3)}"
    loop = WorkerLoop(backend, endpoints, worker_id, max_batch=args.max_batch,
                      batch_wait_ms=args.batch_wait_ms, parent_pid=parent_pid)
    install_signal_handlers(loop)
    log.info("worker %s serving %s model %s on %s", worker_id, backend.provider, name, ", ".join(endpoints))
    code = loop.run()
    log.info("worker %s stopped", worker_id)
    sys.stdout.flush()
    sys.stderr.flush()
    # Sockets are closed and the model thread is done; skip interpreter teardown, which takes
    # seconds with torch loaded and would eat into the gateway's shutdown timeout.
    os._exit(code)


if __name__ == "__main__":
    main()
