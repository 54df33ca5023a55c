"""Attachments subsystem: a CallHook that hands chat messages to ``media/``.

``setup(app)`` registers the hook and owns the parse executor and the URL
fetcher in a cleanup context. Media-level errors become OpenAI error objects
here; ``media/`` itself knows nothing about the gateway or providers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from gateway.errors import from_media
from gateway.keys import CONFIG
from gateway.ops.limits import charge
from gateway.pipeline.hooks import CALL_HOOKS
from gateway.providers.base import ChatCall
from media.attachments import needs_work, resolve_messages
from media.errors import MediaError
from media.fetch import Fetcher
from media.policy import MediaPolicy
from media.sandbox import ParseExecutor


@dataclass(slots=True)
class MediaRuntime:
    policy: MediaPolicy
    fetcher: Fetcher
    executor: ParseExecutor


MEDIA = web.AppKey("media_runtime", MediaRuntime)


def policy_from(app: web.Application) -> MediaPolicy:
    """Every MediaSettings field that MediaPolicy also has is passed through, so a setting added to
    [media] / MediaSettings later (max_image_side, fetch_timeout_s, ...) takes effect without a change here."""
    settings = app[CONFIG].media
    names = [name for name in MediaPolicy.__dataclass_fields__ if name != "real_roots" and hasattr(settings, name)]
    return MediaPolicy(**{name: getattr(settings, name) for name in names})


class AttachmentHook:
    """Rewrites ``call.request.messages`` before the provider sees them."""

    async def before(self, app: web.Application, call: ChatCall) -> None:
        runtime = app.get(MEDIA)
        messages = call.request.messages
        if runtime is None or not needs_work(messages, runtime.policy):
            return  # fast path: plain text, no '@' to resolve
        try:
            call.request.messages = await resolve_messages(messages, runtime.policy, runtime.fetcher,
                                                           runtime.executor, charge)
        except MediaError as exc:
            raise from_media(exc) from None

    async def after(self, app: web.Application, call: ChatCall) -> None:
        return None


async def media_ctx(app: web.Application) -> AsyncIterator[None]:
    policy = policy_from(app)
    executor = ParseExecutor(workers=policy.parse_workers, timeout_s=policy.parse_timeout_s,
                             cpu_s=policy.parse_cpu_s, memory_bytes=policy.parse_memory_bytes)
    # The forkserver (parsers preloaded, ~70 MB) starts on the first attachment, not here: most gateways
    # (and every test gateway on a small box) never parse anything, and the first parse pays ~1-2 s once.
    fetcher = Fetcher(policy)
    app[MEDIA] = MediaRuntime(policy, fetcher, executor)
    yield
    await fetcher.close()
    await executor.close()


def setup(app: web.Application) -> None:
    app[CALL_HOOKS].append(AttachmentHook())
    app.cleanup_ctx.append(media_ctx)
