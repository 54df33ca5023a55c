"""The media doors (/v1/images/*, /v1/audio/*) and the hook through which backends plug in.

Without a backend the routes answer 501 with what to install: no pretend output.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from gateway.errors import not_implemented
from gateway.keys import MEDIA_BACKENDS

MediaHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MEDIA_ROUTES: dict[str, str] = {
    "/v1/images/generations": "an image-generation backend",
    "/v1/images/edits": "an image-editing backend",
    "/v1/audio/transcriptions": "a speech-to-text backend",
    "/v1/audio/translations": "a speech-translation backend",
    "/v1/audio/speech": "a text-to-speech backend",
}


@dataclass(slots=True)
class MediaBackends:
    """Route path -> handler, filled by backends that are installed and configured."""

    handlers: dict[str, MediaHandler] = field(default_factory=dict)

    def register(self, path: str, handler: MediaHandler) -> None:
        if path not in MEDIA_ROUTES:
            raise ValueError(f"no media route {path}")
        self.handlers[path] = handler


def media_route(path: str) -> MediaHandler:
    async def handle(request: web.Request) -> web.StreamResponse:
        handler = request.app[MEDIA_BACKENDS].handlers.get(path)
        if handler is None:
            raise not_implemented(
                f"{path} needs {MEDIA_ROUTES[path]}, and none is installed in this gateway. "
                "acore serves chat, responses and embeddings; register a backend through "
                "gateway.doors.media.MediaBackends to enable this route."
            )
        return await handler(request)

    return handle


def setup(app: web.Application) -> None:
    app[MEDIA_BACKENDS] = MediaBackends()
    for path in MEDIA_ROUTES:
        app.router.add_post(path, media_route(path))
