"""``unload_after``: free the model once the last in-flight request that asked for it is done.

Reference-counted per (provider, base URL, model): a request with
``unload_after`` that ends while another request on the same model is still
running leaves the unload to the last one. For streams the pipeline runs
after-hooks when the stream ends, so the model is freed after the stream.
The unload runs as its own task: a client that disconnects (which cancels the
handler) must not cancel the unload half-way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import GatewayError
from gateway.keys import CONFIG, PROVIDERS
from gateway.pipeline.hooks import CALL_HOOKS
from gateway.providers.base import ChatCall, Provider, Unload

log = logging.getLogger("acore.gateway")
UNLOAD_TIMEOUT_S = 30.0

Key = tuple[str, str, str]


class UnloadHook:
    def __init__(self) -> None:
        self._in_flight: Counter[Key] = Counter()
        self._counted: set[int] = set()  # id() of calls counted in, so after() decrements only those
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _key(call: ChatCall) -> Key:
        return call.provider, call.base_url or "", call.model

    async def before(self, app: web.Application, call: ChatCall) -> None:
        if not call.unload_after:
            return
        unload = app[PROVIDERS].provider_for(call.provider).capabilities.unload
        if unload is Unload.NONE:
            # Hosted APIs and OpenAI-compatible servers have no unload; say so instead of pretending.
            call.notices.append(f"unload_after ignored: provider {call.provider} has no unload")
            return
        if unload is Unload.SHARED and not app[CONFIG].allow_unsafe_unload_after:
            raise GatewayError(
                403,
                f"unload_after is refused for {call.provider}: unloading frees the model for every user of a shared "
                "server. The operator can allow it with ABSTRACTCORE_ALLOW_UNSAFE_UNLOAD_AFTER=1.",
                param="unload_after", code="unload_after_not_allowed")
        self._in_flight[self._key(call)] += 1
        self._counted.add(id(call))

    async def after(self, app: web.Application, call: ChatCall) -> None:
        if id(call) not in self._counted:
            return
        self._counted.discard(id(call))
        key = self._key(call)
        self._in_flight[key] -= 1
        if self._in_flight[key] > 0:
            return  # another request on this model is still running: the last one unloads
        del self._in_flight[key]
        provider = app[PROVIDERS].provider_for(call.provider)
        task = asyncio.create_task(self._unload(provider, call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unload(self, provider: Provider, call: ChatCall) -> None:
        try:
            await asyncio.wait_for(provider.unload(call.model, call.base_url), UNLOAD_TIMEOUT_S)
            log.info("unloaded %s/%s after %s", call.provider, call.model, call.request_id)
        except Exception as exc:  # the answer was served; a failed unload is logged, not raised
            log.warning("unload_after failed for %s/%s: %s", call.provider, call.model, exc)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=UNLOAD_TIMEOUT_S)


def setup(app: web.Application) -> None:
    hook = UnloadHook()
    app[CALL_HOOKS].append(hook)

    async def drain_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await hook.drain()  # let pending unloads finish before the HTTP session closes

    app.cleanup_ctx.append(drain_ctx)
