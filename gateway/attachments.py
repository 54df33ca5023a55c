"""Attachments subsystem: a CallHook that hands chat messages to ``media/``.

``setup(app)`` registers the hook and owns the parse executor and the URL
fetcher in a cleanup context. Media-level errors become OpenAI error objects
here; ``media/`` itself knows nothing about the gateway or providers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from gateway.chat import CALL_HOOKS
from gateway.errors import GatewayError
from gateway.keys import CONFIG
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


def to_gateway_error(exc: MediaError) -> GatewayError:
    return GatewayError(exc.status, exc.message, param=exc.param or "messages", code=exc.code)


def policy_from(app: web.Application) -> MediaPolicy:
    settings = app[CONFIG].media
    return MediaPolicy(roots=settings.roots, url_allowlist=settings.url_allowlist,
                       max_file_bytes=settings.max_file_bytes, max_request_bytes=settings.max_request_bytes)


class AttachmentHook:
    """Rewrites ``call.body["messages"]`` before the provider sees them."""

    async def before(self, app: web.Application, call: ChatCall) -> None:
        runtime = app.get(MEDIA)
        messages = call.body.get("messages")
        if runtime is None or not needs_work(messages, runtime.policy):
            return  # fast path: plain text, no '@' to resolve
        assert isinstance(messages, list)
        try:
            call.body["messages"] = await resolve_messages(messages, runtime.policy, runtime.fetcher,
                                                           runtime.executor)
        except MediaError as exc:
            raise to_gateway_error(exc) from None

    async def after(self, app: web.Application, call: ChatCall) -> None:
        return None


async def media_ctx(app: web.Application) -> AsyncIterator[None]:
    policy = policy_from(app)
    executor = ParseExecutor(workers=policy.parse_workers, timeout_s=policy.parse_timeout_s,
                             cpu_s=policy.parse_cpu_s, memory_bytes=policy.parse_memory_bytes)
    executor.start()  # the forkserver boots now, not on the first attachment
    fetcher = Fetcher(policy)
    app[MEDIA] = MediaRuntime(policy, fetcher, executor)
    yield
    await fetcher.close()
    await executor.close()


def setup(app: web.Application) -> None:
    app[CALL_HOOKS].append(AttachmentHook())
    app.cleanup_ctx.append(media_ctx)
