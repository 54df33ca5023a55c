"""CallHooks: what runs around every chat call, whichever door it came through and whichever provider serves it.

A hook's ``before`` may rewrite or refuse the call; its ``after`` always runs once the call
is over (for a stream, when the stream ends), and only for hooks whose ``before`` ran.
Subsystems (attachments, the base_url policy, unload_after) register themselves in
``CALL_HOOKS``; the pipeline never names them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from aiohttp import web

from gateway.providers.base import ChatCall

log = logging.getLogger("acore.gateway")


class CallHook(Protocol):
    async def before(self, app: web.Application, call: ChatCall) -> None: ...

    async def after(self, app: web.Application, call: ChatCall) -> None: ...


CALL_HOOKS = web.AppKey("call_hooks", list[CallHook])


@asynccontextmanager
async def hooks_around(app: web.Application, call: ChatCall) -> AsyncIterator[None]:
    """Every hook's ``before`` in order, the body, then the ``after`` of those that ran, in reverse."""
    ran: list[CallHook] = []
    try:
        for hook in app.get(CALL_HOOKS, ()):
            await hook.before(app, call)
            ran.append(hook)
        yield
    finally:
        for hook in reversed(ran):
            try:
                await hook.after(app, call)
            except Exception:  # an after-hook must never turn a served answer into an error
                log.exception("after-hook failed for %s", call.request_id)
