"""GET /health (liveness) and GET /health/ready (readiness), both open without the gateway key.

/health keeps the seed's ``{"status": "healthy"}``: the process is up and answering. When local
models are configured or workers connected it adds what it knows of them. /health/ready answers
503 until every configured local model has a live worker, and names any that failed to load: what
a load balancer or an orchestrator should wait for. On acore-endpoint, whose only job is its one
model, /health itself is 503 ``loading`` until that model is ready, and 503 ``error`` with the
load error when it cannot load (as llama-server does).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.doors.http import json_response
from gateway.pool import health as pool_health

routes = web.RouteTableDef()
# Set by acore-endpoint: /health then reports its one model's state.
SINGLE_MODEL = web.AppKey("single_model", bool)


def _workers_summary(info: dict[str, Any]) -> dict[str, Any]:
    models = info["models"]
    summary: dict[str, Any] = {"alive": info.get("workers_alive", 0),
                               "loading": [m["model"] for m in models if m["state"] == "loading"]}
    failed = {m["model"]: m.get("error", "") for m in models if m["state"] == "failed"}
    if failed:
        summary["failed"] = failed
    return summary


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    info = pool_health(request.app)
    if request.app.get(SINGLE_MODEL) and info["models"]:
        model = info["models"][0]
        if model["state"] == "loading":
            loading = {"status": "loading", "model": model["model"]}
            loading.update({k: model[k] for k in ("phase", "progress") if k in model})  # a download's progress
            return json_response(loading, status=503)
        if model["state"] == "failed":
            return json_response({"status": "error", "model": model["model"], "error": model.get("error", "")},
                                 status=503)
    body: dict[str, Any] = {"status": "healthy"}
    if info["models"] or info.get("workers_alive"):
        body["workers"] = _workers_summary(info)
    return json_response(body)


@routes.get("/health/ready")
async def ready(request: web.Request) -> web.Response:
    info = pool_health(request.app)
    body: dict[str, Any] = {"status": "ready" if info["ready"] else "not_ready", "models": info["models"]}
    failed = [m["model"] for m in info["models"] if m["state"] == "failed"]
    if failed:
        body["failed"] = failed
    return json_response(body, status=200 if info["ready"] else 503)


def setup(app: web.Application) -> None:
    app.add_routes(routes)
