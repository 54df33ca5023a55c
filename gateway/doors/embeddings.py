"""POST /v1/embeddings, as OpenAI answers it, for every provider whose ``embed()`` works.

Inputs are validated here (so every provider sees the same 400s); the provider returns a
float32 matrix; the response encodes it as JSON floats or, as the SDKs ask by default,
base64 of little-endian float32.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from gateway.doors.http import read_request
from gateway.errors import GatewayError, bad_request
from gateway.keys import CONFIG, PROVIDERS
from gateway.ops.stats import current, note_upstream_error
from gateway.pipeline.base_url import check_client_base_url
from gateway.pipeline.chat import provider_key_from
from gateway.pipeline.groups import GroupTarget
from gateway.pipeline.routing import ROUTER, RoutedRun, first_answer
from gateway.providers.base import EmbedCall, EmbedResult
from gateway.providers.registry import Target
from protocol.openai import EmbeddingsRequest

routes = web.RouteTableDef()

def _inputs(request: EmbeddingsRequest, limit: int) -> tuple[list[str], list[list[int]] | None]:
    """(texts, token_ids): exactly one kind, checked the way OpenAI checks it."""
    raw = request.input
    if isinstance(raw, str):
        if not raw:
            raise bad_request("'input' cannot be an empty string.", param="input")
        return [raw], None
    if not raw:
        raise bad_request("'input' cannot be an empty list.", param="input")
    if all(isinstance(item, str) for item in raw):
        texts: list[str] = raw  # type: ignore[assignment]
        if len(texts) > limit:
            raise bad_request(f"'input' has {len(texts)} items; at most {limit} are allowed per request.", param="input")
        for index, text in enumerate(texts):
            if not text:
                raise bad_request(f"'input[{index}]' cannot be an empty string.", param="input")
        return texts, None
    if all(isinstance(item, int) and not isinstance(item, bool) for item in raw):
        token_ids: list[list[int]] = [raw]  # type: ignore[list-item]
    elif all(isinstance(item, list) for item in raw):
        token_ids = raw  # type: ignore[assignment]
        if len(token_ids) > limit:
            raise bad_request(f"'input' has {len(token_ids)} items; at most {limit} are allowed per request.",
                              param="input")
    else:
        raise bad_request("'input' must be a string, a list of strings, a list of token ids or a list of "
                          "token-id lists, not a mixture.", param="input")
    for index, ids in enumerate(token_ids):
        if not ids:
            raise bad_request(f"'input[{index}]' cannot be an empty list of token ids.", param="input")
        if any(i < 0 for i in ids):
            raise bad_request(f"'input[{index}]' has a negative token id.", param="input")
    return [], token_ids


def _embedding_items(vectors: np.ndarray, encoding: str) -> list[dict[str, Any]]:
    items = []
    if encoding == "base64":
        little = np.ascontiguousarray(vectors, dtype="<f4")
        for index, row in enumerate(little):
            items.append({"object": "embedding", "index": index, "embedding": base64.b64encode(row.tobytes()).decode()})
    else:
        # orjson writes float32 rows in their shortest round-trip form: the client reads back exactly
        # the float32 values that base64 would carry.
        for index, row in enumerate(np.ascontiguousarray(vectors, dtype=np.float32)):
            items.append({"object": "embedding", "index": index, "embedding": row})
    return items


def _truncate(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Some providers ignore `dimensions`; give the client what it asked for anyway (re-normalised)."""
    if dimensions is None or vectors.shape[1] <= dimensions:
        return vectors
    cut = vectors[:, :dimensions].astype(np.float32)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, np.finfo(np.float32).tiny)


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    _body, parsed = await read_request(request, EmbeddingsRequest)
    config = request.app[CONFIG]
    texts, token_ids = _inputs(parsed, config.limits.max_embedding_inputs)
    registry = request.app[PROVIDERS]
    count = len(token_ids) if token_ids is not None else len(texts)
    requested = parsed.model or ""
    plan = request.app[ROUTER].plan(config, parsed.model, None)
    if plan is None:
        target = registry.resolve(parsed.model)
        request["log"].update(provider=target.provider, model=target.model, inputs=count)
        requested = target.requested
        result, vectors = await _embed(request, parsed, target, texts, token_ids, None)
    else:  # an alias: its targets in turn until one answers
        request["log"].update(inputs=count)

        async def attempt(spec: GroupTarget) -> tuple[Target, EmbedResult, np.ndarray]:
            target = registry.resolve(spec.model)._replace(requested=requested)
            return (target, *await _embed(request, parsed, target, texts, token_ids, spec.base_url))

        _, (target, result, vectors) = await first_answer(RoutedRun(request.app, plan), attempt)
        request["log"].update(provider=target.provider, model=target.model)
    vectors = _truncate(vectors, parsed.dimensions)
    tokens = int(result.prompt_tokens)
    stats = current()
    if stats is not None:
        stats.input_tokens, stats.embed_inputs = tokens, count
    payload = {
        "object": "list",
        "data": _embedding_items(vectors, parsed.encoding_format or "float"),
        "model": requested,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return web.Response(body=orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), content_type="application/json")


async def _embed(request: web.Request, parsed: EmbeddingsRequest, target: Target, texts: list[str],
                 token_ids: list[list[int]] | None, operator_base_url: str | None) -> tuple[EmbedResult, np.ndarray]:
    """One provider's embeddings, checked: one finite vector per input. ``operator_base_url``: a group
    target's own URL (the operator's, trusted like a configured one)."""
    config = request.app[CONFIG]
    provider_name, model, requested = target
    provider = request.app[PROVIDERS].provider_for(provider_name)
    count = len(token_ids) if token_ids is not None else len(texts)
    if not provider.capabilities.embeddings:
        raise bad_request(f"The model '{requested}' does not support embeddings.", param="model",
                          code="embeddings_not_supported")
    if token_ids is not None and not provider.capabilities.embedding_token_ids:
        raise bad_request(f"The model '{requested}' takes text input only: send strings, not token ids "
                          "(token-id arrays are passed through only to OpenAI-compatible providers).",
                          param="input")
    api_key = provider_key_from(request.headers, parsed.api_key)
    base_url, trusted = operator_base_url, operator_base_url is not None
    if parsed.base_url and operator_base_url is None:
        checked = check_client_base_url(config, provider_name, provider.capabilities, parsed.base_url, api_key)
        base_url, trusted = checked.url, checked.trusted
    call = EmbedCall(
        request_id=request["request_id"],
        provider=provider_name,
        model=model,
        requested_model=requested,
        texts=texts,
        dimensions=parsed.dimensions,
        truncate=bool(parsed.truncate),
        token_ids=token_ids,
        api_key=api_key,
        base_url=base_url,
        base_url_trusted=trusted,
    )
    try:
        result: EmbedResult = await provider.embed(call)
    except GatewayError as exc:
        note_upstream_error(exc)
        raise
    vectors = np.asarray(result.vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != count or vectors.shape[1] == 0:
        raise GatewayError(502, f"Provider {provider_name} returned {vectors.shape[0] if vectors.ndim else 0} "
                                f"embeddings for {count} inputs.", type="server_error")
    if not np.isfinite(vectors).all():
        raise GatewayError(502, f"Provider {provider_name} returned non-finite embedding values.", type="server_error")
    return result, vectors


def setup(app: web.Application) -> None:
    app.add_routes(routes)
