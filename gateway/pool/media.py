"""The media routes on local workers: whisper/ (Transcribe), tts/ (Speak), diffusers/ (GenerateImage).

The uploaded bytes go to the worker as raw frames; a transcript comes back as one Final (rendered
here in the client's response_format), speech as MediaChunk frames relayed to the client while
the worker still synthesises, images as PNG frames. Which worker can do what is its Ready's to say.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import GatewayError, bad_request
from gateway.pool.lease import Lease
from gateway.providers.media import (
    MediaCall,
    MediaOperation,
    MediaReply,
    render_transcript,
    single,
    transcript_events,
)
from media.audio import AUDIO_MIME
from protocol.messages import Final, GenerateImage, MediaChunk, Speak, Transcribe

if TYPE_CHECKING:
    from gateway.pool.provider import LocalProvider

LOCAL_SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")  # all of OpenAI's (workers/audio.py)
# What each operation needs of a worker's Ready.capabilities.
NEEDS = {MediaOperation.TRANSCRIPTION: "transcription", MediaOperation.TRANSLATION: "transcription",
         MediaOperation.SPEECH: "speech", MediaOperation.IMAGE_GENERATION: "image_generation",
         MediaOperation.IMAGE_EDIT: "image_generation"}


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _size(value: Any) -> tuple[int | None, int | None]:
    if value in (None, "", "auto"):
        return None, None
    width, sep, height = str(value).partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or not (0 < int(width) <= 4096 and 0 < int(height) <= 4096):
        raise bad_request("size must be WIDTHxHEIGHT (e.g. 512x512) or auto.", param="size")
    return int(width), int(height)


def transcribe_message(call: MediaCall, request_id: str) -> Transcribe:
    fields = call.fields
    upload = call.upload("file")
    return Transcribe(request_id=request_id,
                      task="translate" if call.operation is MediaOperation.TRANSLATION else "transcribe",
                      language=fields.get("language") or None, prompt=fields.get("prompt") or None,
                      temperature=_float(fields.get("temperature")), filename=upload.filename if upload else "")


def speak_message(call: MediaCall, request_id: str) -> Speak:
    fields = call.fields
    kind = fields.get("response_format")
    if kind is None:
        kind = "mp3"  # OpenAI's default
    elif kind not in LOCAL_SPEECH_FORMATS:
        raise bad_request(f"response_format {kind} is not made by local speech workers: use "
                          f"{' or '.join(LOCAL_SPEECH_FORMATS)}.", param="response_format")
    voice = fields.get("voice")
    return Speak(request_id=request_id, input=str(fields["input"]), voice=str(voice) if voice else None,
                 speed=_float(fields.get("speed")), response_format=kind)


def image_message(call: MediaCall, request_id: str) -> GenerateImage:
    fields = call.fields
    if fields.get("response_format") == "url":
        raise bad_request("Local image workers answer response_format b64_json only (there is no URL to serve).",
                          param="response_format")
    width, height = _size(fields.get("size"))
    seed = fields.get("seed")
    steps = fields.get("num_inference_steps", fields.get("steps"))
    return GenerateImage(request_id=request_id, prompt=str(fields["prompt"]), n=int(fields.get("n") or 1),
                         width=width, height=height, seed=int(seed) if seed is not None else None,
                         steps=int(steps) if steps is not None else None,
                         negative_prompt=fields.get("negative_prompt") or None,
                         guidance_scale=_float(fields.get("guidance_scale")),
                         edit=call.operation is MediaOperation.IMAGE_EDIT, has_mask=call.upload("mask") is not None)


def _edit_frames(call: MediaCall) -> list[bytes]:
    image = call.upload("image")
    mask = call.upload("mask")
    return [u.data for u in (image, mask) if u is not None]


async def _final(lease: Lease, idle_s: float) -> tuple[Final, list[Any]]:
    reply = await lease.next(idle_s)
    if not isinstance(reply.message, Final):
        raise GatewayError(502, "The worker answered out of turn.", type="server_error")
    return reply.message, reply.frames


@asynccontextmanager
async def local_media(provider: LocalProvider, call: MediaCall) -> AsyncIterator[MediaReply]:
    operation = call.operation
    provider.check_media(call.model, NEEDS[operation], operation.path)
    request_id = provider.media_request_id(call.request_id)
    timeout = provider.idle_timeout_s
    if operation in (MediaOperation.TRANSCRIPTION, MediaOperation.TRANSLATION):
        message: Transcribe | Speak | GenerateImage = transcribe_message(call, request_id)
        frames = [upload.data for upload in call.uploads if upload.field == "file"][:1]
    elif operation is MediaOperation.SPEECH:
        message, frames = speak_message(call, request_id), []
    else:
        message = image_message(call, request_id)
        frames = _edit_frames(call) if operation is MediaOperation.IMAGE_EDIT else []
    async with await provider.media_lease(call.model, request_id) as lease:
        await lease.send(message, *frames)
        if isinstance(message, Transcribe):
            final, _ = await _final(lease, timeout)
            if str(call.fields.get("stream", "")).lower() == "true":
                yield MediaReply("text/event-stream", single(transcript_events(final.result)))
                return
            body, content_type = render_transcript(final.result, call.fields.get("response_format") or "json",
                                                   message.task)
            yield MediaReply(content_type, single(body))
        elif isinstance(message, GenerateImage):
            final, images = await _final(lease, timeout)
            if len(images) != final.count or not images:
                raise GatewayError(502, f"The worker sent {len(images)} images for {final.count}.", type="server_error")
            data = [{"b64_json": base64.b64encode(bytes(image)).decode(), "revised_prompt": message.prompt}
                    for image in images]
            payload = {"created": int(time.time()), "data": data, "output_format": "png"}
            yield MediaReply("application/json", single(orjson.dumps(payload)))
        else:
            first = await lease.next(timeout)
            content_type = AUDIO_MIME[message.response_format]
            if isinstance(first.message, MediaChunk):
                content_type = first.message.content_type or content_type
            yield MediaReply(content_type, _audio(lease, first.frames if isinstance(first.message, MediaChunk)
                                                  else None, timeout))


async def _audio(lease: Lease, first: list[Any] | None, idle_s: float) -> AsyncIterator[bytes]:
    """The worker's audio frames as they arrive, up to its Final."""
    if first is None:
        return  # the Final came first: no audio (an empty input is refused before this)
    for frame in first:
        yield bytes(frame)
    while True:
        # What arrived together goes out as one write (a block is ~50 ms of audio, a few KB).
        batch = await lease.next_batch(idle_s)
        data = b"".join(bytes(frame) for reply in batch if not isinstance(reply.message, Final)
                        for frame in reply.frames)
        if data:
            yield data
        if isinstance(batch[-1].message, Final):
            return
