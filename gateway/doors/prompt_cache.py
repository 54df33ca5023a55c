"""The prompt-cache control plane ``/acore/prompt_cache/*`` (AbstractCore's shapes), over the worker pool.

Each call becomes a ``CacheOp`` to the worker(s) of the model named in the body (query for
``stats``); on acore-endpoint the registry is pinned, so ``model`` may be left out. Nothing is
proxied to a ``base_url``, so there is no SSRF surface. A key lives on one worker: set, update,
fork and prepare_modules go to the key's owner (a new key goes to the least loaded worker and is
pinned there), stats aggregates every worker and a clear of all keys reaches every worker.
Worker errors keep their status (unknown key 404, fork conflict 409, over budget 413); a provider
without a prompt cache answers the seed's ``{"supported": false, "error": ...}`` with HTTP 200.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway.doors.http import json_response, read_json_body
from gateway.errors import GatewayError, bad_request
from gateway.keys import CONFIG, PROVIDERS
from gateway.pool import POOL
from gateway.pool.client import WorkerPool
from gateway.pool.scheduler import RequestInfo, WorkerState
from protocol.messages import CacheOp, Final

routes = web.RouteTableDef()

PREFIX = "/acore/prompt_cache"
# Pseudo-key pinning a prepare_modules namespace to one worker: its chain of keys builds on itself.
_NAMESPACE_KEY = "\x00modules:"


class _Target:
    """The local model a control-plane call addresses, and its live workers."""

    def __init__(self, request: web.Request, pool: WorkerPool, provider: str, model: str) -> None:
        self.request = request
        self.provider = provider
        self.model = model
        self.pool = pool
        limits = request.app[CONFIG].limits
        self.wait_s = limits.first_byte_timeout_s
        self.idle_s = limits.stream_idle_timeout_s

    @property
    def affinity(self) -> Any:
        return self.pool.scheduler.affinity

    def live(self) -> list[WorkerState]:
        return [w for w in self.pool.live_workers() if w.serves(self.provider, self.model)]

    def owner(self, key: str) -> WorkerState | None:
        identity = self.affinity.owner(self.model, key)
        worker = self.pool.scheduler.workers.get(identity) if identity is not None else None
        return worker if worker is not None and worker.alive else None

    async def run(self, op: str, args: dict[str, Any], *, key: str | None = None,
                  worker: WorkerState | None = None) -> tuple[dict[str, Any], WorkerState]:
        """One CacheOp through a lease: to ``worker``, else to ``key``'s owner (or a new one for it)."""
        request_id = f"{self.request['request_id']}.{secrets.token_hex(3)}"
        info = RequestInfo(request_id, self.provider, self.model, prompt_cache_key=key,
                           worker=worker.identity if worker is not None else None)
        # A lease waits for the worker's slot, so the operation runs in order with generation.
        lease = await self.pool.lease(info, self.wait_s)
        async with lease:
            await lease.send(CacheOp(request_id=request_id, op=op, args=args))
            while True:
                reply = await lease.next(self.idle_s)
                if isinstance(reply.message, Final):
                    return dict(reply.message.result), lease.worker

    async def each(self, op: str, args: dict[str, Any]) -> AsyncIterator[tuple[WorkerState, dict[str, Any] | None,
                                                                             GatewayError | None]]:
        """Run ``op`` on every live worker in turn (one after another: they share the CPU anyway)."""
        workers = self.live()
        if not workers:
            # A supervised worker is (re)starting: wait for it like any request would.
            result, worker = await self.run(op, args)
            yield worker, result, None
            return
        for worker in workers:
            try:
                result, _ = await self.run(op, args, worker=worker)
            except GatewayError as exc:
                yield worker, None, exc
            else:
                yield worker, result, None

    async def locate(self, key: str) -> WorkerState | None:
        """The worker holding ``key``: its pinned owner, else (after a gateway restart, or a pin
        evicted from the bounded table) the one whose stats list it; the pin is then restored."""
        owner = self.owner(key)
        if owner is not None or len(self.live()) < 2:
            return owner
        async for worker, result, _error in self.each("stats", {}):
            if result is not None and key in (result.get("stats") or {}).get("keys", ()):
                self.affinity.pin(self.model, key, worker.identity)
                return worker
        return None


def unsupported(message: str) -> web.Response:
    return json_response({"supported": False, "error": message})


def _key(body: dict[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise bad_request(f"{name} must be a non-empty string.", param=name)
    return value


async def _target(request: web.Request, model: Any) -> _Target | web.Response:
    """Resolve ``model`` to a local model with a prompt cache, or answer why it has none."""
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be a string.", param="model")
    registry = request.app[PROVIDERS]
    provider_name, name, requested = registry.resolve(model or None)
    provider = registry.provider_for(provider_name)
    if not provider.capabilities.prompt_cache or POOL not in request.app:
        return unsupported(f"The provider '{provider_name}' has no prompt cache control plane here: "
                           "it is available for local worker models that keep one.")
    pool = request.app[POOL].pool
    workers = pool.scheduler.check_known(provider_name, name)  # 404 model_not_found
    live = [w for w in workers if w.alive]
    if live and not any(w.ready.capabilities.prompt_cache for w in live):
        return unsupported(f"The model '{requested}' ({live[0].ready.provider}) has no prompt cache.")
    return _Target(request, pool, provider_name, name)


async def _body_target(request: web.Request) -> tuple[dict[str, Any], _Target | web.Response]:
    body = await read_json_body(request)
    args = {k: v for k, v in body.items() if k not in ("model", "base_url", "api_key")}
    return args, await _target(request, body.get("model"))


# ---------------------------------------------------------------- routes


@routes.get(PREFIX + "/stats")
async def stats(request: web.Request) -> web.Response:
    target = await _target(request, request.query.get("model"))
    if isinstance(target, web.Response):
        return target
    merged: dict[str, Any] = {"entries": 0, "named_entries": 0, "bytes": 0, "max_bytes": 0, "default_ttl_s": None,
                              "default_key": None, "keys": [], "meta_by_key": {}, "workers": []}
    errors: list[GatewayError] = []
    async for worker, result, error in target.each("stats", {}):
        if error is not None:
            # One worker failing (e.g. it died mid-call) must not hide the others' keys.
            errors.append(error)
            merged["workers"].append({"worker": worker.id, "error": error.message})
            continue
        assert result is not None
        part = result.get("stats") or {}
        for field in ("entries", "named_entries", "bytes", "max_bytes"):
            merged[field] += int(part.get(field) or 0)
        merged["default_ttl_s"] = merged["default_ttl_s"] or part.get("default_ttl_s")
        merged["default_key"] = merged["default_key"] or part.get("default_key")
        merged["keys"] += list(part.get("keys") or [])
        for key, meta in (part.get("meta_by_key") or {}).items():
            merged["meta_by_key"][key] = {**meta, "worker": worker.id}
        merged["workers"].append({"worker": worker.id, "entries": part.get("entries", 0),
                                  "bytes": part.get("bytes", 0), "max_bytes": part.get("max_bytes", 0),
                                  "keys": len(part.get("keys") or [])})
    if errors and len(errors) == len(merged["workers"]):
        raise errors[0]
    return json_response({"supported": True, "stats": merged})


async def _keyed_op(request: web.Request, op: str) -> web.Response:
    """An operation on one key (set, update): it runs on the worker holding that key."""
    args, target = await _body_target(request)
    if isinstance(target, web.Response):
        return target
    result, _ = await target.run(op, args, key=_key(args, "key"))
    return json_response(result)


@routes.post(PREFIX + "/set")
async def set_key(request: web.Request) -> web.Response:
    return await _keyed_op(request, "set")


@routes.post(PREFIX + "/update")
async def update(request: web.Request) -> web.Response:
    return await _keyed_op(request, "update")


@routes.post(PREFIX + "/fork")
async def fork(request: web.Request) -> web.Response:
    args, target = await _body_target(request)
    if isinstance(target, web.Response):
        return target
    from_key, to_key = _key(args, "from_key"), _key(args, "to_key")
    assert from_key is not None and to_key is not None
    source = await target.locate(from_key)
    if source is None and len(target.live()) > 1:
        raise GatewayError(404, f"unknown prompt cache key {from_key!r}", param="from_key", code="not_found")
    held = target.owner(to_key)
    if source is not None and held is not None and held is not source:
        # The copy is made where the source lives; an existing to_key elsewhere would be shadowed.
        if not args.get("overwrite"):
            raise GatewayError(409, f"prompt cache key {to_key!r} exists (pass overwrite)", param="to_key",
                               code="conflict")
        try:
            await target.run("clear", {"key": to_key}, worker=held)
        except GatewayError as exc:
            if exc.status != 404:
                raise
    result, worker = await target.run("fork", args, key=from_key, worker=source)
    target.affinity.pin(target.model, to_key, worker.identity)
    return json_response(result)


@routes.post(PREFIX + "/clear")
async def clear(request: web.Request) -> web.Response:
    args, target = await _body_target(request)
    if isinstance(target, web.Response):
        return target
    key = _key(args, "key", optional=True)
    if key is not None:
        owner = target.owner(key)
        if owner is not None or len(target.live()) < 2:
            # No key= here: a clear must never pin the key it removes to a worker.
            cleared, _ = await target.run("clear", {"key": key}, worker=owner)
            target.affinity.unpin(target.model, key)
            return json_response(cleared)
    # All keys (or a key whose holder the gateway does not know): every worker; bytes are the total left.
    total, found, last_error = 0, False, None
    async for worker, result, error in target.each("clear", {"key": key}):
        if error is not None:
            if error.status != 404:
                raise error
            last_error = error
            continue
        assert result is not None
        found = True
        total += int(result.get("bytes") or 0)
        if key is None:
            target.affinity.unpin_worker(target.model, worker.identity)
    if not found and last_error is not None:
        raise last_error
    if key is not None:
        target.affinity.unpin(target.model, key)
    return json_response({"supported": True, "ok": True, "bytes": total})


@routes.post(PREFIX + "/prepare_modules")
async def prepare_modules(request: web.Request) -> web.Response:
    args, target = await _body_target(request)
    if isinstance(target, web.Response):
        return target
    namespace = _key(args, "namespace")
    result, worker = await target.run("prepare_modules", args, key=_NAMESPACE_KEY + str(namespace))
    for module in result.get("modules") or ():
        if isinstance(module, dict) and isinstance(module.get("cache_key"), str):
            target.affinity.pin(target.model, module["cache_key"], worker.identity)
    return json_response(result)


async def _apply_routing_config(app: web.Application) -> AsyncIterator[None]:
    # Runs after the pool's cleanup context (SUBSYSTEMS order), so the scheduler exists by now.
    if POOL in app:
        app[POOL].pool.scheduler.affinity.cache_aware = app[CONFIG].cache_aware_routing
    yield


def setup(app: web.Application) -> None:
    app.add_routes(routes)
    app.cleanup_ctx.append(_apply_routing_config)
