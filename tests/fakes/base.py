"""What every fake upstream shares: recording requests, the /_requests routes, and its command line.

Each fake is an aiohttp app started as its own process (``python -m tests.fakes.X --port N``) on
127.0.0.1. Every request it serves is recorded (path, headers, body): ``GET /_requests`` reads the
records, oldest first, and ``DELETE /_requests`` clears them (tests/http.py has the client side).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from aiohttp import web

RECORDS = web.AppKey("records", list[dict[str, Any]])


def record(request: web.Request, body: Any) -> dict[str, Any]:
    """Record a request with its already decoded body; the record is returned so that a handler can
    add to it later (e.g. ``record["cancelled"] = True`` when the client goes away)."""
    entry = {"path": request.path, "headers": dict(request.headers), "body": body}
    request.app[RECORDS].append(entry)
    return entry


async def get_records(request: web.Request) -> web.Response:
    return web.json_response(request.app[RECORDS])


async def clear_records(request: web.Request) -> web.Response:
    request.app[RECORDS].clear()
    return web.json_response({"ok": True})


def make_app(*routes: web.RouteDef) -> web.Application:
    """An app with the fake's own ``routes``, an empty record list and the /_requests routes."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[RECORDS] = []
    app.add_routes(routes)
    app.router.add_get("/_requests", get_records)
    app.router.add_delete("/_requests", clear_records)
    return app


def serve_main(build_app: Callable[[], web.Application], *, default_port: int,
               handler_cancellation: bool = False) -> None:
    """The fake's ``main()``: parse --host/--port and run the app until interrupted."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    args = parser.parse_args()
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None,
                handler_cancellation=handler_cancellation)
