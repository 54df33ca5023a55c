"""Encoding of worker messages: msgpack header frame plus optional raw frames.

Decoding is schema-checked against the tagged union; anything else raises
``MalformedFrame`` so the caller can drop it and count it. Never pickle.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from protocol.messages import AnyMessage, GatewayMessage, WorkerMessage

# A peer sending a bigger message is disconnected by ZeroMQ itself (zmq.MAXMSGSIZE).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class MalformedFrame(ValueError):
    """A frame that is not a valid message of the expected direction."""


_encoder = msgspec.msgpack.Encoder()


class Decoder:
    """Decodes ``[header, *binary]`` frame lists for one direction of traffic."""

    def __init__(self, message_type: object) -> None:
        self._decoder: msgspec.msgpack.Decoder[AnyMessage] = msgspec.msgpack.Decoder(message_type)  # type: ignore[arg-type]

    def decode(self, frames: Sequence[bytes | memoryview]) -> tuple[AnyMessage, list[bytes | memoryview]]:
        if not frames:
            raise MalformedFrame("empty message")
        try:
            message = self._decoder.decode(frames[0])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise MalformedFrame(str(exc)) from None
        return message, list(frames[1:])


def encode(message: AnyMessage, *binary: bytes | memoryview) -> list[bytes | memoryview]:
    return [_encoder.encode(message), *binary]


def gateway_side_decoder() -> Decoder:
    """What the gateway receives: worker messages."""
    return Decoder(WorkerMessage)


def worker_side_decoder() -> Decoder:
    """What a worker receives: gateway messages."""
    return Decoder(GatewayMessage)


def vectors_to_frame(vectors: np.ndarray) -> memoryview:
    """A (count, dims) float32 matrix as one little-endian raw frame."""
    array = np.ascontiguousarray(vectors, dtype="<f4")
    return memoryview(array.data).cast("B")


def frame_to_vectors(frame: bytes | memoryview, count: int, dims: int) -> np.ndarray:
    expected = count * dims * 4
    if len(frame) != expected:
        raise MalformedFrame(f"vector frame has {len(frame)} bytes, expected {expected}")
    return np.frombuffer(frame, dtype="<f4").reshape(count, dims)
