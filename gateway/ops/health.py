"""GET /health: liveness (open without the gateway key)."""

from __future__ import annotations

from aiohttp import web

from gateway.doors.http import json_response

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "healthy"})


def setup(app: web.Application) -> None:
    app.add_routes(routes)
