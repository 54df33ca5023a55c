"""/openapi.json generated from the msgspec types that validate requests; /docs and /redoc offline.

The UI assets come from the installed aiohttp-swagger3 package (Swagger UI and
ReDoc bundles), so a browser needs no CDN. We use only its static files:
the document itself is ours, built from protocol.openai.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from gateway.doors.http import json_response
from protocol import openai as types
from protocol.anthropic import CountTokensRequest, MessagesRequest
from protocol.responses import ResponsesRequest

routes = web.RouteTableDef()

# (method, path, summary, request type or None, tag)
OPERATIONS: list[tuple[str, str, str, str | None, str]] = [
    ("post", "/v1/chat/completions", "Create a chat completion (stream with stream=true)", "ChatCompletionRequest", "chat"),
    ("post", "/v1/responses", "Create a model response (OpenAI Responses API)", "ResponsesRequest", "responses"),
    ("get", "/v1/responses/{response_id}", "Retrieve a stored response", None, "responses"),
    ("delete", "/v1/responses/{response_id}", "Delete a stored response", None, "responses"),
    ("post", "/v1/messages", "Create a message (Anthropic Messages API; errors in Anthropic's shape)", "MessagesRequest",
     "messages"),
    ("post", "/v1/messages/count_tokens", "Count a message's input tokens (x-acore-token-count says how)",
     "CountTokensRequest", "messages"),
    ("post", "/v1/embeddings", "Create embeddings", "EmbeddingsRequest", "embeddings"),
    ("get", "/v1/models", "List models of every provider (?provider=, ?type=)", None, "models"),
    ("get", "/providers", "Providers and their probed state", None, "models"),
    ("get", "/health", "Liveness", None, "health"),
    ("get", "/metrics", "Prometheus metrics (text format); the gateway key or ACORE_METRICS_KEY", None, "health"),
]


def assets_dir() -> Path:
    import aiohttp_swagger3

    return Path(aiohttp_swagger3.__file__).parent


def build_openapi() -> dict[str, Any]:
    request_types = [types.ChatCompletionRequest, types.EmbeddingsRequest, ResponsesRequest, types.ErrorResponse,
                     types.ModelList, MessagesRequest, CountTokensRequest]
    _, components = msgspec.json.schema_components(request_types, ref_template="#/components/schemas/{name}")
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    error_response = {"description": "OpenAI error object", "content": {"application/json": {"schema": error_ref}}}
    paths: dict[str, Any] = {}
    for method, path, summary, request_type, tag in OPERATIONS:
        operation: dict[str, Any] = {
            "summary": summary,
            "tags": [tag],
            "responses": {"200": {"description": "OK"}, "4XX": error_response, "5XX": error_response},
        }
        if request_type is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request_type}"}}},
            }
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "acore", "version": "0.1.0", "description": "One server, all models, any client."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


_SWAGGER_HTML = """<!doctype html><html><head><meta charset="utf-8"><title>acore API</title>
<link rel="stylesheet" href="/docs/static/swagger_ui/swagger-ui.css"></head><body><div id="ui"></div>
<script src="/docs/static/swagger_ui/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script></body></html>"""

_REDOC_HTML = """<!doctype html><html><head><meta charset="utf-8"><title>acore API</title></head><body>
<redoc spec-url="/openapi.json"></redoc><script src="/docs/static/redoc_ui/redoc.standalone.js"></script>
</body></html>"""


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(build_openapi())


@routes.get("/docs")
async def swagger(request: web.Request) -> web.Response:
    return web.Response(text=_SWAGGER_HTML, content_type="text/html")


@routes.get("/redoc")
async def redoc(request: web.Request) -> web.Response:
    return web.Response(text=_REDOC_HTML, content_type="text/html")


def setup(app: web.Application) -> None:
    app.add_routes(routes)
    base = assets_dir()
    # follow_symlinks stays False (CVE-2024-23334); only these two asset folders are served.
    app.router.add_static("/docs/static/swagger_ui", base / "swagger_ui", follow_symlinks=False)
    app.router.add_static("/docs/static/redoc_ui", base / "redoc_ui", follow_symlinks=False)
