"""``acore-endpoint``: one local model exposed directly as ``/v1``, plus ``/acore/prompt_cache/*``.

Not a second server: it is the gateway's own app (``create_app``) configured with exactly one
supervised worker, no default embeddings worker, and a registry that holds only that worker's
provider, pinned to its model (single-model mode: any ``model`` in a request is accepted and
echoed). Cloud providers are neither listed nor routed: the endpoint serves its one model.
The worker socket is derived from the endpoint's port, so it never clashes with a gateway on 8000.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from gateway.app import create_app
from gateway.cli.serve import add_log_flags, log_overrides, run
from gateway.config import ConfigError, GatewayConfig, WorkerSpec, load_config
from gateway.keys import PROVIDERS
from gateway.ops.health import SINGLE_MODEL
from gateway.providers.registry import ProviderRegistry
from protocol.local import ENDPOINT_PROVIDERS, default_name, listed_under, resolve_engine

DEFAULT_PORT = 8001


def parse_args(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> argparse.Namespace:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="acore-endpoint",
        description="Serve one local model as an OpenAI-compatible /v1 plus its prompt-cache control plane. "
        "Environment form: ABSTRACTENDPOINT_PROVIDER, ABSTRACTENDPOINT_MODEL, ABSTRACTENDPOINT_HOST, "
        "ABSTRACTENDPOINT_PORT (flags win).",
    )
    parser.add_argument("--provider", choices=ENDPOINT_PROVIDERS, default=env.get("ABSTRACTENDPOINT_PROVIDER"),
                        help="llamacpp (a GGUF) or mlx (a directory); huggingface = llamacpp for a GGUF, else "
                             "transformers")
    parser.add_argument("--model", default=env.get("ABSTRACTENDPOINT_MODEL"), metavar="PATH_OR_HUB_ID",
                        help="GGUF file, model directory, or Hugging Face Hub id (ORG/REPO, ORG/REPO:QUANT, "
                             "ORG/REPO/FILE.gguf), downloaded into the Hub cache")
    parser.add_argument("--name", help="serve the model under this name (default: file stem or directory name)")
    parser.add_argument("--host", default=env.get("ABSTRACTENDPOINT_HOST") or "127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--threads", type=int, help="CPU threads for the model")
    parser.add_argument("--n-ctx", type=int, help="context window in tokens (default: the model's, capped)")
    parser.add_argument("--prompt-cache-bytes", type=int, metavar="N",
                        help="host-memory budget of the prompt cache in bytes (default 512 MiB)")
    add_log_flags(parser)
    args = parser.parse_args(argv)
    if args.port is None:
        raw = env.get("ABSTRACTENDPOINT_PORT")
        try:
            args.port = int(raw) if raw else DEFAULT_PORT
        except ValueError:
            parser.error(f"ABSTRACTENDPOINT_PORT must be a port number, got {raw!r}")
    if not args.provider or not args.model:
        parser.error("--provider and --model are required (or ABSTRACTENDPOINT_PROVIDER and ABSTRACTENDPOINT_MODEL)")
    if args.provider not in ENDPOINT_PROVIDERS:
        parser.error(f"provider must be one of {', '.join(ENDPOINT_PROVIDERS)}, got {args.provider!r}")
    return args


def build_config(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> GatewayConfig:
    spec = WorkerSpec(provider=args.provider, model=args.model, name=args.name, threads=args.threads,
                      n_ctx=args.n_ctx, prompt_cache_bytes=getattr(args, "prompt_cache_bytes", None))
    overrides = {"host": args.host, "port": args.port, "workers": [spec], "default_embeddings": False,
                 **log_overrides(args)}
    return load_config(env=env, overrides=overrides)


def served_model(spec: WorkerSpec) -> tuple[str, str]:
    """(provider it is listed under, model name): what every request is pinned to."""
    engine = resolve_engine(spec.provider, spec.model)
    return listed_under(engine), spec.name or default_name(spec.provider, spec.model)


def create_endpoint_app(config: GatewayConfig) -> web.Application:
    if len(config.workers) != 1:
        raise ConfigError("acore-endpoint serves exactly one model")
    provider, model = served_model(config.workers[0])
    app = create_app(config)
    app[SINGLE_MODEL] = True  # /health is this model's state

    async def single_model(app: web.Application) -> AsyncIterator[None]:
        # Appended after create_app's contexts, so the pool has registered its local providers.
        # A registry with only this provider: cloud providers are neither listed nor routed.
        full = app[PROVIDERS]
        local = full.get(provider)
        if local is None:
            raise ConfigError(f"no {provider} provider was registered by the worker pool")
        registry = ProviderRegistry(config)
        registry.register(local)
        registry.pin(provider, model)
        app[PROVIDERS] = registry
        yield

    app.cleanup_ctx.append(single_model)
    return app


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def banner(config: GatewayConfig, _loop: str) -> str:
        provider, model = served_model(config.workers[0])
        return f"acore-endpoint serving {provider}/{model} on http://{config.host}:{config.port}"

    run("acore-endpoint", "auto", lambda: build_config(args), create_endpoint_app, banner)


if __name__ == "__main__":
    main()
