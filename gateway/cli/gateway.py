"""``acore-gateway`` (also ``python -m gateway``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from gateway.app import create_app
from gateway.cli.fronts import run_fronts
from gateway.cli.serve import add_log_flags, install_event_loop, log_overrides, run
from gateway.config import ConfigError, GatewayConfig, WorkerSpec, load_config
from gateway.ops.logs import setup_logging
from gateway.pipeline.agent_format import refuse_tool_execution
from gateway.pool.auth import ensure_gateway_keys, gateway_key_files
from protocol.curve import AUTHORIZED_DIR, key_id
from protocol.local import die_with_parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="acore-gateway",
        description="OpenAI-compatible gateway: one server, all models, any client. "
        "Cloud providers come from environment keys (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...). "
        "`acore-gateway keygen DIR` writes the CurveZMQ keys for workers on other hosts.",
    )
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default 8000)")
    parser.add_argument("--config", metavar="FILE", help="TOML config file ([[workers]], [providers.X], [limits], [media])")
    parser.add_argument("--worker", action="append", metavar="PROVIDER:MODEL", default=[],
                        help="start and supervise a local worker, e.g. llamacpp:model.gguf, mlx:DIR or a Hugging "
                             "Face Hub id: llamacpp:ORG/REPO:QUANT, huggingface:ORG/REPO (repeatable)")
    parser.add_argument("--worker-bind", metavar="ENDPOINT",
                        help="bind the worker socket here (tcp://HOST:PORT) instead of a private ipc:// path")
    parser.add_argument("--worker-keys", metavar="DIR",
                        help="CurveZMQ keys for a tcp:// worker bind: DIR/gateway.key_secret (made when absent) and "
                             "DIR/authorized/*.key, the worker keys allowed to join; also ACORE_WORKER_KEYS")
    parser.add_argument("--processes", metavar="N|auto", default=None,
                        help="HTTP front processes sharing the port (default 1; auto: one per core); "
                             "also ACORE_PROCESSES")
    parser.add_argument("--shutdown-timeout", type=float, metavar="S", default=None,
                        help="on SIGTERM, how long in-flight requests and streams may finish (default 5 s)")
    parser.add_argument("--stream-idle-timeout", type=float, metavar="S", default=None,
                        help="end a stream that sends nothing for S seconds with an error event (default 120; "
                             "a request's timeout_s wins); also ACORE_STREAM_IDLE_TIMEOUT")
    parser.add_argument("--header-timeout", type=float, metavar="S", default=None,
                        help="answer 408 to a connection whose request headers take longer (default 10); "
                             "also ACORE_HEADER_TIMEOUT")
    parser.add_argument("--max-connections", type=int, metavar="N", default=None,
                        help="refuse new connections past N open ones (default 8192, and below the open-file "
                             "limit); also ACORE_MAX_CONNECTIONS")
    parser.add_argument("--max-inflight-bytes", type=int, metavar="N", default=None,
                        help="request bodies and attachments held at once; past it new requests get 503 "
                             "(default 1/8 of the RAM); also ACORE_MAX_INFLIGHT_BYTES")
    parser.add_argument("--no-default-embeddings", action="store_true",
                        help="do not start the packaged all-MiniLM-L6-v2 embeddings worker")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="event loop: uvloop when installed (auto, the default), or the standard asyncio loop")
    add_log_flags(parser)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> GatewayConfig:
    refuse_tool_execution(os.environ)  # acore never executes tools: a seed setting saying so is refused
    overrides = {
        "host": args.host,
        "port": args.port,
        "workers": [WorkerSpec.parse(text) for text in args.worker] or None,
        "worker_bind": args.worker_bind,
        "worker_keys": args.worker_keys,
        "processes": args.processes,
        "shutdown_timeout_s": args.shutdown_timeout,
        "limits": {"stream_idle_timeout_s": args.stream_idle_timeout, "header_timeout_s": args.header_timeout,
                   "max_connections": args.max_connections, "max_inflight_bytes": args.max_inflight_bytes},
        "default_embeddings": False if args.no_default_embeddings else None,
        **log_overrides(args),
    }
    return load_config(config_file=args.config, overrides=overrides)


def keygen(argv: list[str]) -> None:
    """``acore-gateway keygen DIR``: the gateway's key pair and an empty authorized/ directory."""
    parser = argparse.ArgumentParser(prog="acore-gateway keygen",
                                     description="Write the gateway's CurveZMQ key pair (DIR/gateway.key, "
                                                 "DIR/gateway.key_secret mode 0600) and DIR/authorized/.")
    parser.add_argument("dir", metavar="DIR")
    args = parser.parse_args(argv)
    directory = Path(args.dir)
    try:
        pair, made = ensure_gateway_keys(directory)
    except ConfigError as exc:
        print(f"acore-gateway keygen: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    public, _secret = gateway_key_files(directory)
    print(f"{'wrote' if made else 'kept the existing'} {public} and its secret file (key {key_id(pair.public)})")
    print(f"copy {public} to each worker host; put each worker's public .key file into {directory / AUTHORIZED_DIR}/")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keygen"]:
        keygen(argv[1:])
        return
    args = parse_args(argv)
    if os.environ.get("ACORE_FRONT_INDEX"):
        die_with_parent()  # a front of a --processes N gateway: it ends with its parent
    else:
        try:
            processes = build_config(args).processes
        except ConfigError as exc:
            print(f"acore-gateway: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        if processes > 1:
            run_parent(args, argv)
            return
    run("acore-gateway", args.loop, lambda: build_config(args), create_app,
        lambda config, loop: f"acore-gateway listening on http://{config.host}:{config.port} ({loop} event loop)")


def run_parent(args: argparse.Namespace, argv: list[str]) -> None:
    """The parent of N front processes (gateway/cli/fronts.py): it owns the workers, serves no HTTP."""
    install_event_loop(args.loop)
    try:
        config = build_config(args)
        setup_logging(config.debug, config.secrets())
        asyncio.run(run_fronts(config, argv))
    except ConfigError as exc:
        print(f"acore-gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
