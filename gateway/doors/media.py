"""The media doors: /v1/images/generations|edits, /v1/audio/transcriptions|translations|speech.

Each request is checked here (fields, upload size and type: the same 4xx for every provider),
becomes a ``MediaCall`` and goes to the provider that ``model`` names, if its capabilities
include the operation: OpenAI-compatible providers relay it upstream, local workers (whisper/,
tts/, diffusers/) answer it themselves. The answer streams back as it comes (speech audio
before synthesis ends). A backend registered through ``MediaBackends`` (plugins, the
``acore.media_backends`` entry points) takes its route over the providers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.doors.http import read_json_body
from gateway.doors.uploads import check_audio, check_image, read_form
from gateway.errors import GatewayError, bad_request
from gateway.keys import CONFIG, MEDIA_BACKENDS, PROVIDERS
from gateway.ops.stats import note_upstream_error
from gateway.pipeline.base_url import check_client_base_url
from gateway.pipeline.chat import provider_key_from
from gateway.providers.media import (
    OPERATION_BY_ROUTE,
    TRANSCRIPT_FORMATS,
    MediaCall,
    MediaOperation,
    MediaProvider,
)

MediaHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MEDIA_ROUTES: dict[str, str] = {
    "/v1/images/generations": "an image-generation backend",
    "/v1/images/edits": "an image-editing backend",
    "/v1/audio/transcriptions": "a speech-to-text backend",
    "/v1/audio/translations": "a speech-translation backend",
    "/v1/audio/speech": "a text-to-speech backend",
}

SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MAX_SPEECH_INPUT = 4096  # characters, as OpenAI
MAX_IMAGES = 10


@dataclass(slots=True)
class MediaBackends:
    """Route path -> handler, filled by backends that are installed and configured (plugins)."""

    handlers: dict[str, MediaHandler] = field(default_factory=dict)

    def register(self, path: str, handler: MediaHandler) -> None:
        if path not in MEDIA_ROUTES:
            raise ValueError(f"no media route {path}")
        self.handlers[path] = handler


# ---------------------------------------------------------------------- field checks (one set for every provider)


def _number(fields: dict[str, Any], name: str, low: float, high: float) -> None:
    value = fields.get(name)
    if value is None:
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad_request(f"{name} must be a number.", param=name) from None
    if not low <= number <= high:
        raise bad_request(f"{name} must be between {low:g} and {high:g}.", param=name)


def _choice(fields: dict[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    value = fields.get(name)
    if value is not None and value not in allowed:
        raise bad_request(f"{name} must be one of: {', '.join(allowed)}.", param=name)


def _text(fields: dict[str, Any], name: str, limit: int | None = None) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"{name} is required and must be a non-empty string.", param=name)
    if limit is not None and len(value) > limit:
        raise bad_request(f"{name} is longer than {limit} characters.", param=name)
    return value


def _check(operation: MediaOperation, call: MediaCall) -> None:
    fields = call.fields
    if operation in (MediaOperation.TRANSCRIPTION, MediaOperation.TRANSLATION):
        upload = call.upload("file")
        if upload is None:
            raise bad_request("file is required: upload the audio as multipart field 'file'.", param="file")
        check_audio(upload)
        _choice(fields, "response_format", TRANSCRIPT_FORMATS)
        _number(fields, "temperature", 0.0, 1.0)
    elif operation is MediaOperation.SPEECH:
        _text(fields, "input", MAX_SPEECH_INPUT)
        _choice(fields, "response_format", SPEECH_FORMATS)
        _number(fields, "speed", 0.25, 4.0)
    else:
        _text(fields, "prompt", 32000)
        _number(fields, "n", 1, MAX_IMAGES)
        if operation is MediaOperation.IMAGE_EDIT:
            images = [u for u in call.uploads if u.field in ("image", "image[]")]
            if not images:
                raise bad_request("image is required: upload it as multipart field 'image'.", param="image")
            call.uploads = [check_image(u, "mask" if u.field == "mask" else "image") for u in call.uploads]


async def read_call(request: web.Request, operation: MediaOperation) -> MediaCall:
    """The request as a checked MediaCall for the provider ``model`` names."""
    config = request.app[CONFIG]
    multipart = operation in (MediaOperation.TRANSCRIPTION, MediaOperation.TRANSLATION, MediaOperation.IMAGE_EDIT)
    if multipart:
        form, uploads = await read_form(request, config.limits.max_upload_bytes)
        fields: dict[str, Any] = dict(form)
    else:
        fields, uploads = await read_json_body(request), []
    model = fields.pop("model", None)
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be a string.", param="model")
    api_key = provider_key_from(request.headers, fields.pop("api_key", None))
    base_url = fields.pop("base_url", None)
    registry = request.app[PROVIDERS]
    target = registry.resolve(model)
    provider = registry.provider_for(target.provider)
    call = MediaCall(request_id=request["request_id"], provider=target.provider, model=target.model,
                     requested_model=target.requested, operation=operation, fields=fields, uploads=uploads,
                     multipart=multipart, api_key=api_key)
    _check(operation, call)
    if not operation.supported_by(provider.capabilities):
        raise bad_request(f"The model '{target.requested}' cannot serve {operation.path} (provider {target.provider} "
                          "has no such API).", param="model", code="model_not_supported")
    if base_url:
        if not isinstance(base_url, str):
            raise bad_request("base_url must be a string.", param="base_url")
        checked = check_client_base_url(config, target.provider, provider.capabilities, base_url, api_key)
        call.base_url, call.base_url_trusted = checked.url, checked.trusted
    request["log"].update(provider=target.provider, model=target.model)
    return call


async def serve_call(request: web.Request, call: MediaCall) -> web.StreamResponse:
    """Run the call and stream its answer: headers once the provider answered (an early error keeps its
    status), then every piece as it arrives."""
    provider: MediaProvider = request.app[PROVIDERS].provider_for(call.provider)  # type: ignore[assignment]
    try:
        async with provider.media(call) as reply:
            body = reply.body
            first = await anext(body, b"")
            headers = dict(reply.headers)
            if call.notices:
                headers["x-acore-notice"] = "; ".join(call.notices)
            response = web.StreamResponse(headers={**headers, "Content-Type": reply.content_type})
            await response.prepare(request)
            if first:
                await response.write(first)
            try:
                async for piece in body:
                    await response.write(piece)
            except (GatewayError, aiohttp.ClientError, TimeoutError) as exc:
                # The status has left already: end the body early (the client sees a cut answer), and log why.
                if isinstance(exc, GatewayError):
                    note_upstream_error(exc)
                request["log"].update(error=getattr(exc, "message", None) or type(exc).__name__)
                return response
            await response.write_eof()
            return response
    except GatewayError as exc:
        note_upstream_error(exc)
        raise


def media_route(path: str) -> MediaHandler:
    operation = OPERATION_BY_ROUTE[path]

    async def handle(request: web.Request) -> web.StreamResponse:
        handler = request.app[MEDIA_BACKENDS].handlers.get(path)
        if handler is not None:
            return await handler(request)
        return await serve_call(request, await read_call(request, operation))

    return handle


def setup(app: web.Application) -> None:
    from gateway.media_backends import load_entry_points

    app[MEDIA_BACKENDS] = MediaBackends()
    load_entry_points(app)
    for path in MEDIA_ROUTES:
        app.router.add_post(path, media_route(path))
