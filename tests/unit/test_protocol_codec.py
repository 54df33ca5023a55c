"""protocol.openai validation (param naming) and protocol.codec framing."""

from __future__ import annotations

import pickle
from typing import Any

import msgspec
import numpy as np
import pytest

from protocol import codec
from protocol.openai import ChatCompletionRequest, RequestValidationError, validate

USER = [{"role": "user", "content": "hi"}]


def test_valid_request_keeps_unknown_fields_out_of_the_struct() -> None:
    request = validate({"model": "openai/x", "messages": USER, "seed": 0, "future": 1}, ChatCompletionRequest)
    assert request.seed == 0 and request.model == "openai/x"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": "hi"}, "messages"),
        ({"messages": USER, "n": 10**9}, "n"),
        ({"messages": USER, "max_tokens": -1}, "max_tokens"),
        ({"messages": USER, "stream": "yes"}, "stream"),
        ({"messages": USER, "temperature": 3}, "temperature"),
        ({"messages": USER, "stop": ["a"] * 17}, "stop"),
        ({"messages": USER, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": USER, "logit_bias": {"1": 500}}, "logit_bias"),
        ({}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": USER, "tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
    ],
)
def test_validation_names_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        validate(body, ChatCompletionRequest)
    # msgspec names a dict value "logit_bias[...]"; the field is what a client needs to see
    assert info.value.param is not None and info.value.param.split("[...]")[0] == param
    assert param in info.value.message


def test_bool_is_not_an_int() -> None:
    with pytest.raises(RequestValidationError):
        validate({"messages": USER, "n": True}, ChatCompletionRequest)




def test_codec_rejects_garbage_and_pickle() -> None:
    decoder = codec.gateway_side_decoder()
    for frames in ([], [b"\xc1"], [b"not msgpack at all"], [pickle.dumps({"x": 1})],
                   [msgspec.msgpack.encode({"type": "nope"})]):
        with pytest.raises(codec.MalformedFrame):
            decoder.decode(frames)


def test_vectors_roundtrip_little_endian() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    frame = codec.vectors_to_frame(vectors)
    assert bytes(frame) == vectors.astype("<f4").tobytes()
    back = codec.frame_to_vectors(bytes(frame), 3, 4)
    assert np.array_equal(back, vectors)
    with pytest.raises(codec.MalformedFrame):
        codec.frame_to_vectors(bytes(frame)[:-1], 3, 4)
