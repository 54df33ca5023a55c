"""``acore-gateway`` (also ``python -m gateway``)."""

from __future__ import annotations

import argparse

from gateway.app import create_app
from gateway.cli.serve import run
from gateway.config import GatewayConfig, WorkerSpec, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="acore-gateway",
        description="OpenAI-compatible gateway: one server, all models, any client. "
        "Cloud providers come from environment keys (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...).",
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
        "default_embeddings": False if args.no_default_embeddings else None,
    }
    return load_config(config_file=args.config, overrides=overrides)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run("acore-gateway", args.loop, lambda: build_config(args), create_app,
        lambda config, loop: f"acore-gateway listening on http://{config.host}:{config.port} ({loop} event loop)")


if __name__ == "__main__":
    main()
