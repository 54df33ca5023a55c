"""``acore-gateway`` (also ``python -m gateway``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.app import create_app
from gateway.cli.serve import run
from gateway.config import ConfigError, GatewayConfig, WorkerSpec, load_config
from gateway.pool.auth import ensure_gateway_keys, gateway_key_files
from protocol.curve import AUTHORIZED_DIR, key_id


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="acore-gateway",
        description="OpenAI-compatible gateway: one server, all models, any client. "
        "Cloud providers come from environment keys (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...). "
        "`acore-gateway keygen DIR` writes the CurveZMQ keys for workers on other hosts.",
    )
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default 8000)")
    parser.add_argument("--debug", action="store_true", default=None,
                        help="structured JSON log line per request (secrets redacted); also ABSTRACTCORE_DEBUG=1")
    parser.add_argument("--config", metavar="FILE", help="TOML config file ([[workers]], [providers.X], [limits], [media])")
    parser.add_argument("--worker", action="append", metavar="PROVIDER:MODEL", default=[],
                        help="start and supervise a local worker, e.g. llamacpp:model.gguf or mlx:DIR (repeatable)")
    parser.add_argument("--worker-bind", metavar="ENDPOINT",
                        help="bind the worker socket here (tcp://HOST:PORT) instead of a private ipc:// path")
    parser.add_argument("--worker-keys", metavar="DIR",
                        help="CurveZMQ keys for a tcp:// worker bind: DIR/gateway.key_secret (made when absent) and "
                             "DIR/authorized/*.key, the worker keys allowed to join; also ACORE_WORKER_KEYS")
    parser.add_argument("--no-default-embeddings", action="store_true",
                        help="do not start the packaged all-MiniLM-L6-v2 embeddings worker")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="event loop: uvloop when installed (auto, the default), or the standard asyncio loop")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> GatewayConfig:
    overrides = {
        "host": args.host,
        "port": args.port,
        "debug": args.debug,
        "workers": [WorkerSpec.parse(text) for text in args.worker] or None,
        "worker_bind": args.worker_bind,
        "worker_keys": args.worker_keys,
        "default_embeddings": False if args.no_default_embeddings else None,
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
    run("acore-gateway", args.loop, lambda: build_config(args), create_app,
        lambda config, loop: f"acore-gateway listening on http://{config.host}:{config.port} ({loop} event loop)")


if __name__ == "__main__":
    main()
