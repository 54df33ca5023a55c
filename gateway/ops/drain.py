"""A graceful stop: stop accepting, let what is in flight finish, end the rest clearly, stop workers last.

On SIGTERM (or SIGINT) the server closes its listening socket and idle keep-alive connections
(aiohttp's runner), then ``drain`` waits up to ``--shutdown-timeout`` for the requests in flight
(streams included) to finish. Streams still open after that end with an error event saying the
server is shutting down; the cleanup contexts then run, the worker pool's last, so workers stop
after the requests they served. A second signal skips the wait.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.keys import CONFIG, STREAMS

log = logging.getLogger("acore.gateway")
# Set by the server (cli/serve.py) on a second stop signal: end the streams at once.
HURRY = web.AppKey("hurry", dict[str, bool])


@web.middleware
async def inflight_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    tracker = request.app[STREAMS]
    tracker.started()
    try:
        return await handler(request)
    finally:
        tracker.ended()


async def drain(app: web.Application) -> None:
    tracker = app[STREAMS]
    timeout = app[CONFIG].limits.shutdown_timeout_s
    if tracker.requests and not app[HURRY].get("now"):
        log.info("draining: %d request(s) in flight, %d stream(s); waiting up to %.1f s", tracker.requests,
                 len(tracker), timeout)
        if await tracker.wait_idle(timeout):
            log.info("drained: every request finished")
    if len(tracker):
        log.info("ending %d stream(s) still open", len(tracker))
    await tracker.close_all()


def setup(app: web.Application) -> None:
    app[HURRY] = {}
    app.on_shutdown.append(drain)
