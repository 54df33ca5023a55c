"""Concurrent chats on one transformers worker are decoded together: a gateway supervising one
``huggingface`` worker on the tiny random llama (workers/transformers_tiny.py), real processes.

Each batched stream must carry exactly what the same request gets alone (greedy), with its own
usage and finish reason, while a client of the same batch that goes away ends only its own stream;
the worker's log names the requests of every batch it decodes.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests import http
from tests.procs import Proc, start_gateway
from workers.transformers_tiny import write_tiny_transformers_model

MODEL = "huggingface/tiny-batch"
FOLLOWER_TOKENS = [24, 40, 56]
LEADER_TOKENS = 2000  # long enough that the followers arrive while it runs
QUITTER_TOKENS = 3000  # a follower whose client goes away after its first chunk


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_transformers_model(tmp_path_factory.mktemp("tf-batch") / "tiny-batch")


@pytest.fixture(scope="module")
def eos(model_dir: Path) -> int:
    return int(json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"])


@pytest.fixture(scope="module")
def gateway(model_dir: Path, log_dir: Path) -> Iterator[Proc]:
    # one torch thread: on a small shared machine more threads make a tiny model slower, not faster
    config = model_dir.parent / "gateway.toml"
    config.write_text(f'[[workers]]\nprovider = "huggingface"\nmodel = "{model_dir}"\nthreads = 1\n')
    proc = start_gateway(log_dir, extra_args=["--config", str(config)])
    try:
        deadline = time.monotonic() + 180
        while not any(m["id"] == MODEL and m.get("workers") for m in http.get_json(proc.url + "/v1/models")["data"]):
            assert time.monotonic() < deadline, f"{MODEL} not ready:\n{proc.log()[-3000:]}"
            time.sleep(0.2)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def messages(index: int) -> list[Any]:
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Question number {index}: " + "tell me about cats " * index}]


class Stream:
    """One streamed chat, read to its end: text, usage, finish reason; ``started`` at its first token."""

    def __init__(self, client: openai.OpenAI, eos: int, index: int, max_tokens: int, request_id: str,
                 hang_up_after: int | None = None) -> None:
        self.hang_up_after = hang_up_after  # content chunks read before the client goes away
        self.chunks = 0
        self.started = threading.Event()
        self.text, self.usage, self.finish = "", None, ""
        self.error: BaseException | None = None
        # EOS suppressed: every answer runs to max_tokens, whatever the random model writes
        self._args: dict[str, Any] = {"model": MODEL, "messages": messages(index), "max_tokens": max_tokens,
                                      "temperature": 0, "logit_bias": {str(eos): -100}, "stream": True,
                                      "stream_options": {"include_usage": True},
                                      "extra_headers": {"x-request-id": request_id}}
        self._client = client
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        try:
            stream = self._client.chat.completions.create(**self._args)
            for chunk in stream:
                self.usage = chunk.usage or self.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        self.text += choice.delta.content
                        self.chunks += 1
                        self.started.set()
                    self.finish = choice.finish_reason or self.finish
                if self.hang_up_after is not None and self.chunks >= self.hang_up_after:
                    stream.close()  # the connection closes: the gateway aborts the request in the worker
                    return
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
        finally:
            self.started.set()

    def run(self) -> Stream:
        self.thread.start()
        return self

    def join(self) -> Stream:
        self.thread.join(120)
        assert not self.thread.is_alive() and self.error is None, self.error
        return self


def test_concurrent_streams_are_decoded_in_one_batch(gateway: Proc, client: openai.OpenAI, eos: int) -> None:
    alone = [Stream(client, eos, i + 1, n, f"alone-{i}").run().join() for i, n in enumerate(FOLLOWER_TOKENS)]
    for stream, n in zip(alone, FOLLOWER_TOKENS, strict=True):
        assert stream.finish == "length" and stream.usage is not None and stream.usage.completion_tokens == n

    # One long stream runs; four more come while it does: they wait in the worker and are decoded together.
    leader = Stream(client, eos, 0, LEADER_TOKENS, "leader").run()
    assert leader.started.wait(60)
    followers = [Stream(client, eos, i + 1, n, f"follower-{i}").run() for i, n in enumerate(FOLLOWER_TOKENS)]
    quitter = Stream(client, eos, 9, QUITTER_TOKENS, "quitter", hang_up_after=1).run()
    for stream in [leader, *followers, quitter]:
        stream.join()

    for stream, reference in zip(followers, alone, strict=True):
        assert stream.text == reference.text  # greedy: its own answer, batched or not
        assert stream.finish == reference.finish == "length"
        assert stream.usage is not None and reference.usage is not None
        assert stream.usage.completion_tokens == reference.usage.completion_tokens
        assert stream.usage.prompt_tokens == reference.usage.prompt_tokens
        assert stream.usage.prompt_tokens_details is not None
        assert stream.usage.prompt_tokens_details.cached_tokens == 0  # a batch evaluates its prompts in full
    assert leader.usage is not None and leader.usage.completion_tokens == LEADER_TOKENS

    batches = [line for line in gateway.log().splitlines() if "requests in one batch" in line]
    followed = [line for line in batches if all(re.search(rf"\b{name}\.", line)
                                                 for name in ("follower-0", "follower-1", "follower-2", "quitter"))]
    assert followed, batches
    worker = next(w for p in http.get_json(gateway.url + "/providers")["providers"] for w in p.get("workers", [])
                  if w["model"] == "tiny-batch")
    assert worker["max_concurrency"] == 8  # the gateway sends the worker as many as it batches
