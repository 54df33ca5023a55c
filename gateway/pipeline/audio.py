"""Audio in chat: a CallHook applying ``[audio] strategy`` to every clip in the messages.

``input_audio`` parts and audio files (``@x.wav``, ``file_url``, ``file`` / ``input_file`` data and
``file_id``) are found by media/audio_parts.py; here each becomes what the strategy says:

- ``stt``: transcribed by ``[audio] stt_model`` (default: the first whisper/ worker) through the
  same media call as /v1/audio/transcriptions, inserted as text, with an ``x-acore-notice``;
- ``native``: sent as an ``input_audio`` part, to models whose provider takes audio;
- ``reject``: 400 naming the setting;
- ``auto`` (default): native where the provider takes audio, else stt.

It runs before the attachment hook, which then sees ``file_id`` parts already inline.
"""

from __future__ import annotations

import base64

import orjson
from aiohttp import web

from gateway.config import AudioSettings
from gateway.errors import GatewayError, bad_request, from_media
from gateway.keys import CONFIG, FILE_STORE, PROVIDERS
from gateway.ops.limits import charge
from gateway.pipeline.attachments import MEDIA
from gateway.pipeline.hooks import CALL_HOOKS
from gateway.providers.base import ChatCall
from gateway.providers.media import MediaCall, MediaOperation, MediaProvider, Upload
from media.audio import AUDIO_MIME
from media.audio_parts import needs_audio_work, resolve_audio
from media.errors import MediaError

SETTING = '[audio] strategy (ACORE_AUDIO_STRATEGY)'
NATIVE_FORMATS = ("wav", "mp3")  # what OpenAI's input_audio takes


async def stt_model(app: web.Application, settings: AudioSettings) -> str:
    if settings.stt_model:
        return settings.stt_model
    registry = app[PROVIDERS]
    status = await registry.status("whisper") if registry.get("whisper") is not None else None
    if status is None or not status.models:
        raise bad_request(f"Audio in this chat would be transcribed ({SETTING} = stt), but no speech-to-text "
                          "model is configured: start a whisper worker (--worker whisper:DIR) or set [audio] "
                          "stt_model (ACORE_AUDIO_STT_MODEL).", param="messages", code="no_stt_model")
    return f"whisper/{status.models[0].id}"


async def transcribe(app: web.Application, call: ChatCall, data: bytes, fmt: str, name: str,
                     settings: AudioSettings) -> tuple[str, str]:
    """(text, model) of one clip, through the model's media call (a local worker or a provider's API)."""
    model = await stt_model(app, settings)
    target = app[PROVIDERS].resolve(model)
    provider = app[PROVIDERS].provider_for(target.provider)
    if not provider.capabilities.audio_transcription:
        raise bad_request(f"[audio] stt_model {model} cannot transcribe.", param="messages")
    fields = {"response_format": "json", **({"language": settings.language} if settings.language else {})}
    filename = name if "." in name else f"{name}.{fmt}"
    media = MediaCall(request_id=call.request_id, provider=target.provider, model=target.model,
                      requested_model=target.requested, operation=MediaOperation.TRANSCRIPTION, fields=fields,
                      uploads=[Upload("file", filename, AUDIO_MIME.get(fmt, "application/octet-stream"), data)],
                      multipart=True)
    media_provider: MediaProvider = provider  # type: ignore[assignment]
    async with media_provider.media(media) as reply:
        body = b"".join([piece async for piece in reply.body])
    try:
        text = str(orjson.loads(body)["text"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise GatewayError(502, f"{model} sent no transcript.", type="server_error") from None
    return text, model


class AudioHook:
    async def before(self, app: web.Application, call: ChatCall) -> None:
        messages = call.request.messages
        if not needs_audio_work(messages):
            return
        runtime = app.get(MEDIA)
        if runtime is None:
            return
        settings = app[CONFIG].audio
        takes_audio = app[PROVIDERS].provider_for(call.provider).capabilities.audio_input
        strategy = settings.strategy
        if strategy == "auto":
            strategy = "native" if takes_audio else "stt"

        async def on_audio(data: bytes, fmt: str, name: str) -> dict[str, object]:
            if strategy == "reject":
                raise bad_request(f"Audio in chat messages is turned off on this gateway ({SETTING} = \"reject\"): "
                                  f"remove {name}, or transcribe it with /v1/audio/transcriptions.",
                                  param="messages", code="audio_not_allowed")
            if strategy == "native":
                if not takes_audio:
                    raise bad_request(f"The model '{call.requested_model}' does not take audio input ({SETTING} = "
                                      "\"native\"); set it to stt to send a transcript instead.", param="messages",
                                      code="audio_not_supported")
                if fmt not in NATIVE_FORMATS:
                    raise bad_request(f"{name}: audio input is sent as wav or mp3, not {fmt}.", param="messages")
                return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}
            text, model = await transcribe(app, call, data, fmt, name, settings)
            call.notices.append(f"{name} was transcribed by {model}")
            return {"type": "text", "text": f"[Transcript of {name}]\n{text}"}

        try:
            call.request.messages = await resolve_audio(messages, runtime.policy, runtime.fetcher,
                                                        app.get(FILE_STORE), on_audio, charge)
        except MediaError as exc:
            raise from_media(exc) from None

    async def after(self, app: web.Application, call: ChatCall) -> None:
        return None


def setup(app: web.Application) -> None:
    app[CALL_HOOKS].append(AudioHook())
