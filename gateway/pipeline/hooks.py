"""CallHooks: what runs around every chat call, whichever door it came through and whichever provider serves it.

A hook's ``before`` may rewrite or refuse the call; its ``after`` always runs once the call
is over (for a stream, when the stream ends), and only for hooks whose ``before`` ran.
Subsystems (attachments, the base_url policy, unload_after) register themselves in
``CALL_HOOKS``; the pipeline never names them.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import web

from gateway.providers.base import ChatCall

log = logging.getLogger("acore.gateway")


class CallHook(Protocol):
    async def before(self, app: web.Application, call: ChatCall) -> None: ...

    async def after(self, app: web.Application, call: ChatCall) -> None: ...


CALL_HOOKS = web.AppKey("call_hooks", list[CallHook])


class HooksAround:
    """Every hook's ``before`` in order, the body, then the ``after`` of those that ran, in reverse.

    A class rather than an @asynccontextmanager: it runs on every request, and a generator-based
    context manager costs several extra calls each time."""

    __slots__ = ("app", "call", "ran")

    def __init__(self, app: web.Application, call: ChatCall) -> None:
        self.app = app
        self.call = call
        self.ran: list[CallHook] = []

    async def __aenter__(self) -> None:
        try:
            for hook in self.app[CALL_HOOKS]:
                await hook.before(self.app, self.call)
                self.ran.append(hook)
        except BaseException:
            await self._after()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self._after()

    async def _after(self) -> None:
        for hook in reversed(self.ran):
            try:
                await hook.after(self.app, self.call)
            except Exception:  # an after-hook must never turn a served answer into an error
                log.exception("after-hook failed for %s", self.call.request_id)
        self.ran.clear()
