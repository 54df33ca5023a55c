"""GET /v1/models (aggregated across providers), GET /v1/models/{id}, GET /providers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.doors.http import json_response
from gateway.errors import bad_request, model_not_found
from gateway.keys import CONFIG, PROVIDERS
from gateway.pipeline.routing import ROUTER
from gateway.providers.base import ModelType

routes = web.RouteTableDef()

_TYPES = {t.value: t for t in ModelType}


@routes.get("/v1/models")
@routes.get("/models")  # Codex's doctor probes the unversioned path
async def list_models(request: web.Request) -> web.Response:
    registry = request.app[PROVIDERS]
    only = request.query.get("provider") or None
    if only is not None and registry.get(only) is None:
        raise bad_request(f"Unknown provider '{only}'. Known providers: {', '.join(registry.names())}.", param="provider")
    type_filter = request.query.get("type")
    if type_filter is not None and type_filter not in _TYPES:
        raise bad_request(f"type must be one of: {', '.join(_TYPES)}.", param="type")
    data = []
    for provider, info in await registry.models(only):
        if type_filter is not None and info.type != _TYPES[type_filter]:
            continue
        item: dict[str, Any] = {"id": f"{provider}/{info.id}", "object": "model", "created": 0, "owned_by": info.owned_by or provider}
        item["type"] = info.type.value
        item.update(info.extra)
        data.append(item)
    for alias in _aliases(request.app, data):
        if type_filter is None or alias["type"] == type_filter:
            data.append(alias)
    data.sort(key=lambda item: item["id"])
    return json_response({"object": "list", "data": data})


def _aliases(app: web.Application, listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The config's aliases and groups as models: typed like the first target found among the listed."""
    types = {item["id"]: item["type"] for item in listed}
    out = []
    for group in app[CONFIG].models.values():
        kind = next((types[t.model] for t in group.targets if t.model in types), ModelType.TEXT.value)
        out.append({"id": group.name, "object": "model", "created": 0, "owned_by": "acore", "type": kind,
                    "strategy": group.strategy, "targets": [t.model for t in group.targets]})
    return out


@routes.get("/v1/models/{model:.+}")
async def get_model(request: web.Request) -> web.Response:
    wanted = request.match_info["model"]
    registry = request.app[PROVIDERS]
    group = request.app[CONFIG].models.get(wanted)
    if group is not None:
        return json_response({"id": group.name, "object": "model", "created": 0, "owned_by": "acore",
                              "strategy": group.strategy, "targets": [t.model for t in group.targets]})
    provider, name, _ = registry.resolve(wanted)
    for info in (await registry.status(provider)).models:
        if info.id == name:
            return json_response({"id": f"{provider}/{name}", "object": "model", "created": 0,
                                  "owned_by": info.owned_by or provider, "type": info.type.value})
    raise model_not_found(f"The model '{wanted}' does not exist.")


@routes.get("/providers")
async def list_providers(request: web.Request) -> web.Response:
    registry = request.app[PROVIDERS]
    statuses = await registry.all_status()
    providers = []
    for name, status in statuses.items():
        entry: dict[str, Any] = {
            "name": name,
            "status": status.state.value,
            "model_count": len(status.models),
            "detail": status.detail,
        }
        if request.query.get("include_models") in ("1", "true", "yes"):
            entry["models"] = [f"{name}/{m.id}" for m in status.models]
        entry.update(status.extra)
        providers.append(entry)
    body: dict[str, Any] = {"providers": providers, "total_providers": len(providers)}
    groups = request.app[CONFIG].models
    if groups:  # aliases and groups: each target's circuit breaker, load and time to first byte
        body["groups"] = request.app[ROUTER].view(groups)
    return json_response(body)


def setup(app: web.Application) -> None:
    app.add_routes(routes)
