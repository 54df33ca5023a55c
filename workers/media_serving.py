"""Serving the media requests on the model thread: Transcribe, Speak, GenerateImage.

The loop (workers/loop.py) hands a request here with its raw frames and a ``reply`` that sends
a message (plus frames) to the gateway that asked. Speech goes out block by block as the
backend synthesises it (one MediaChunk each), so the client hears the start before the end is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from protocol.messages import ErrorCode, Final, FinishReason, GenerateImage, MediaChunk, Speak, Transcribe
from workers.audio import SpeechEncoder
from workers.backend import Backend, WorkerError

MEDIA_REQUESTS = (Transcribe, Speak, GenerateImage)
Reply = Callable[..., None]  # reply(message, *frames)


def serve_media(backend: Backend, message: Transcribe | Speak | GenerateImage, frames: list[Any], reply: Reply,
                cancelled: Callable[[], bool]) -> None:
    request_id = message.request_id
    if isinstance(message, Transcribe):
        if not frames or not len(frames[0]):
            raise WorkerError(ErrorCode.BAD_REQUEST, "no audio was sent", param="file")
        result = backend.transcribe(message, bytes(frames[0]))
        reply(Final(request_id=request_id, result=result))
    elif isinstance(message, Speak):
        encoder = SpeechEncoder(message.response_format)

        def emit(samples: np.ndarray, rate: int) -> None:
            if len(samples) and not cancelled():
                reply(MediaChunk(request_id=request_id, content_type=encoder.content_type),
                      encoder.encode(np.asarray(samples), rate))

        try:
            backend.speak(message, emit, cancelled)
            tail = b"" if cancelled() else encoder.finish()  # an encoder's buffered frames, a flac whole
        finally:
            encoder.close()
        if tail:
            reply(MediaChunk(request_id=request_id, content_type=encoder.content_type), tail)
        reply(Final(request_id=request_id, finish_reason=FinishReason.ABORTED if cancelled() else FinishReason.STOP))
    else:
        images = backend.generate_images(message, [bytes(frame) for frame in frames])
        if len(images) != message.n:
            raise WorkerError(ErrorCode.INTERNAL, f"the backend made {len(images)} images for {message.n}")
        reply(Final(request_id=request_id, count=len(images)), *images)
