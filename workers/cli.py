"""``acore-worker`` (also ``python -m workers``): load one model, serve it to one or more gateways."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from protocol.curve import (
    DEFAULT_WORKER_KEY_NAME,
    CurveKeys,
    KeyFileError,
    create_key_pair,
    load_pair,
    load_public,
)
from protocol.endpoints import default_worker_endpoint, is_loopback_tcp
from protocol.local import (
    EXIT_LOAD_FAILED,
    SUPERVISOR_ENV,
    TEST_BACKENDS_ENV,
    WORKER_PROVIDERS,
    default_name,
    die_with_parent,
    resolve_engine,
)
from workers.announce import LoadingBeacon
from workers.backend import BACKENDS, Backend, ModelLoadError
from workers.hub import fetch_model
from workers.tool_calls import NAMES as TOOL_PARSERS

# Test-only backends: accepted solely with ACORE_TEST_BACKENDS=1, so a deployment never exposes them.
TEST_BACKENDS = {"echo": "tests.fakes.echo_backend:EchoBackend"}

log = logging.getLogger("acore.worker")

EMBED_MAX_BATCH = 64  # --max-batch's default for embeddings (a chat backend has its own default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    test_backends = os.environ.get(TEST_BACKENDS_ENV) == "1"
    choices = [*WORKER_PROVIDERS, *TEST_BACKENDS] if test_backends else list(WORKER_PROVIDERS)
    parser = argparse.ArgumentParser(
        prog="acore-worker",
        description="Load one local model once and serve it to acore gateways over ZeroMQ. "
                    "`acore-worker keygen DIR [--name NAME]` writes a CurveZMQ key pair for joining from another host.",
    )
    parser.add_argument("--provider", required=True, choices=choices,
                        help="model engine; huggingface = llamacpp for a GGUF, sentence-transformers for an "
                             "embeddings model, else transformers; media: whisper (speech-to-text), tts "
                             "(--model espeak-ng, or a Piper voice: --model VOICE.onnx), diffusers (images)")
    parser.add_argument("--model", required=True, metavar="PATH_OR_HUB_ID",
                        help="GGUF file, model directory, or Hugging Face Hub id (ORG/REPO; for llama.cpp "
                             "ORG/REPO:QUANT or ORG/REPO/FILE.gguf), downloaded into the Hub cache")
    parser.add_argument("--name", help="serve the model under this name (default: file stem, directory or repo "
                                       "name, or the sentence-transformers id)")
    parser.add_argument("--n-ctx", type=int, help="context window in tokens (default: the model's, capped)")
    parser.add_argument("--threads", type=int, help="CPU threads for the model")
    parser.add_argument("--tool-parser", metavar="NAME", choices=TOOL_PARSERS,
                        help="tool-call syntax of the model (default auto: recognised in its chat template): "
                             + ", ".join(TOOL_PARSERS))
    parser.add_argument("--connect", action="append", metavar="ENDPOINT", default=[],
                        help="gateway worker endpoint (repeatable; default: the ipc:// endpoint of port 8000)")
    parser.add_argument("--prompt-cache-bytes", type=int, metavar="N",
                        help="host-memory budget of the prompt cache in bytes (llamacpp, mlx; default 512 MiB)")
    parser.add_argument("--prompt-cache-ttl-s", type=float, metavar="S",
                        help="drop prompt-cache entries unused for this long (default: no TTL)")
    parser.add_argument("--gateway-key", metavar="FILE", default=os.environ.get("ACORE_GATEWAY_KEY"),
                        help="the gateway's public key file (its gateway.key) for tcp:// endpoints with CurveZMQ; "
                             "also ACORE_GATEWAY_KEY")
    parser.add_argument("--key", metavar="FILE", default=os.environ.get("ACORE_WORKER_KEY"),
                        help="this worker's secret key file (NAME.key_secret, from `acore-worker keygen`); "
                             "also ACORE_WORKER_KEY")
    parser.add_argument("--max-batch", type=int, metavar="N",
                        help="most embedding inputs per batch (default 64); for a transformers chat model, most "
                             "requests decoded together and sent to the worker at once (default 8)")
    parser.add_argument("--batch-wait-ms", type=float, default=3.0,
                        help="how long to wait for more embedding requests to batch (default 3 ms)")
    return parser.parse_args(argv)


def keygen(argv: list[str]) -> None:
    """``acore-worker keygen DIR [--name NAME]``: DIR/NAME.key (public) and DIR/NAME.key_secret (0600)."""
    parser = argparse.ArgumentParser(prog="acore-worker keygen",
                                     description="Write a CurveZMQ key pair for this worker.")
    parser.add_argument("dir", metavar="DIR")
    parser.add_argument("--name", default=DEFAULT_WORKER_KEY_NAME, help=f"file name (default {DEFAULT_WORKER_KEY_NAME})")
    args = parser.parse_args(argv)
    try:
        public, secret = create_key_pair(args.dir, args.name)
        pair = load_pair(secret)
    except (KeyFileError, OSError) as exc:
        print(f"acore-worker keygen: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {public} and {secret} (key {pair.key_id})")
    print(f"copy {public} into the gateway's keys directory, under authorized/; start this worker with --key {secret}")


def curve_keys(args: argparse.Namespace, endpoints: list[str]) -> CurveKeys | None:
    """The keys for tcp:// endpoints; a tcp:// endpoint beyond loopback without them is refused up front."""
    if bool(args.gateway_key) != bool(args.key):
        raise ModelLoadError("CurveZMQ needs both --gateway-key (the gateway's gateway.key) and --key "
                             "(this worker's .key_secret)")
    if not args.key:
        remote = [e for e in endpoints if e.startswith("tcp://") and not is_loopback_tcp(e)]
        if remote:
            raise ModelLoadError(f"{remote[0]} is on another host: pass --gateway-key FILE and --key FILE "
                                 "(see `acore-worker keygen` and the README's two-host recipe)")
        return None
    try:
        return CurveKeys(gateway=load_public(args.gateway_key), own=load_pair(args.key))
    except KeyFileError as exc:
        raise ModelLoadError(str(exc)) from None


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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keygen"]:
        keygen(argv[1:])
        return
    args = parse_args(argv)
    endpoints = args.connect or [default_worker_endpoint(8000)]
    try:
        keys = curve_keys(args, endpoints)
    except ModelLoadError as exc:
        print(f"acore-worker: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_LOAD_FAILED) from None
    provider = resolve_engine(args.provider, args.model)
    name = args.name or default_name(args.provider, args.model)
    options: dict[str, Any] = {"n_ctx": args.n_ctx, "threads": args.threads}
    if args.prompt_cache_bytes is not None:
        options["prompt_cache_bytes"] = args.prompt_cache_bytes
    if args.prompt_cache_ttl_s is not None:
        options["prompt_cache_ttl_s"] = args.prompt_cache_ttl_s
    if args.tool_parser:
        options["tool_parser"] = args.tool_parser
    if args.max_batch is not None:
        options["max_batch"] = args.max_batch  # a backend that batches chats reads it (default its own)
    supervisor = os.environ.get(SUPERVISOR_ENV)
    parent_pid = int(supervisor) if supervisor and supervisor.isdigit() else None
    if parent_pid is not None:
        die_with_parent()
        if os.getppid() != parent_pid:  # the gateway died before prctl took effect
            raise SystemExit(1)
    # Identity: unique per process so a restarted worker is never mistaken for its predecessor.
    worker_id = f"{name[-80:]}-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        # Until the model is loaded, the beacon tells the gateways (downloading, then loading).
        with LoadingBeacon(endpoints, worker_id, provider, name, keys) as beacon:
            path = fetch_model(provider, args.model, beacon.update)  # a Hub id is downloaded first
            if args.provider == "huggingface" and provider == "transformers" and (Path(path) / "modules.json").is_file():
                provider = "sentence-transformers"  # only the downloaded repo tells: an embeddings model
            beacon.update("loading", source=args.model)
            backend = load_backend_class(provider)(path, name, options)
            log.info("loading %s ...", path)
            started = time.monotonic()
            backend.load()
    except ModelLoadError as exc:
        print(f"acore-worker: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_LOAD_FAILED) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    log.info("loaded %s in %.2f s", name, time.monotonic() - started)

    from workers.loop import WorkerLoop, install_signal_handlers

    embed_batch = EMBED_MAX_BATCH if args.max_batch is None else args.max_batch
    loop = WorkerLoop(backend, endpoints, worker_id, max_batch=embed_batch,
                      batch_wait_ms=args.batch_wait_ms, parent_pid=parent_pid, curve=keys)
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
