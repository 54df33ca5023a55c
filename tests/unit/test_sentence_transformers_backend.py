"""The sentence-transformers backend in-process, on the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"


from protocol.local import packaged_embeddings_dir
from protocol.messages import Embed, ErrorCode
from workers.backend import ModelLoadError
from workers.sentence_transformers import SentenceTransformersBackend, metadata_from_dir

SIMILAR = ("A man is eating food.", "A man eats a meal.")
UNRELATED = "The new movie is awesome, the theater was full."


@pytest.fixture(scope="session")
def backend() -> Iterator[SentenceTransformersBackend]:
    # torch + sentence-transformers take ~6 s to import: load once for the whole session.
    instance = SentenceTransformersBackend("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", {"threads": 1})
    instance.load()
    yield instance
    instance.unload()


def test_info_before_load_comes_from_the_files() -> None:
    fresh = SentenceTransformersBackend("all-MiniLM-L6-v2", "all-MiniLM-L6-v2", {})
    info = fresh.info()
    assert not fresh.loaded
    assert info.capabilities.embeddings and not info.capabilities.chat
    assert info.embedding_dimensions == 384
    assert info.context_length == 256
    assert info.max_concurrency > 1
    directory = packaged_embeddings_dir()
    assert directory is not None and metadata_from_dir(directory) == (384, 256)


def test_info_after_load(backend: SentenceTransformersBackend) -> None:
    info = backend.info()
    assert backend.loaded
    assert (info.embedding_dimensions, info.context_length) == (384, 256)


def test_missing_model_fails_fast_and_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not available offline"):
        SentenceTransformersBackend("acore-test/definitely-not-cached", "x", {}).load()
    with pytest.raises(ModelLoadError, match="does not exist"):
        SentenceTransformersBackend(str(tmp_path / "missing"), "x", {}).load()


def test_known_similarity_ranks(backend: SentenceTransformersBackend) -> None:
    [outcome] = backend.embed([Embed("r1", [*SIMILAR, UNRELATED])])
    assert outcome.error is None and outcome.vectors is not None
    vectors = outcome.vectors
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    close = float(vectors[0] @ vectors[1])
    far = float(vectors[0] @ vectors[2])
    assert close > 0.8 > 0.3 > far
    assert len(outcome.token_counts) == 3 and outcome.token_counts[:2] == [8, 8]  # [CLS] + 6 pieces + [SEP]


def test_dimensions_truncate_and_renormalise(backend: SentenceTransformersBackend) -> None:
    full, cut = backend.embed([Embed("full", [SIMILAR[0]]), Embed("cut", [SIMILAR[0]], dimensions=64)])
    assert full.vectors is not None and cut.vectors is not None
    assert cut.vectors.shape == (1, 64)
    assert float(np.linalg.norm(cut.vectors[0])) == pytest.approx(1.0, abs=1e-5)
    expected = full.vectors[0, :64] / np.linalg.norm(full.vectors[0, :64])
    np.testing.assert_allclose(cut.vectors[0], expected, atol=1e-5)


def test_dimensions_larger_than_model(backend: SentenceTransformersBackend) -> None:
    [outcome] = backend.embed([Embed("big", ["hello"], dimensions=385)])
    assert outcome.vectors is None and outcome.error is not None
    assert outcome.error.code == ErrorCode.BAD_REQUEST and outcome.error.param == "dimensions"
    assert "384" in outcome.error.message


def test_too_long_input_is_refused_unless_truncate(backend: SentenceTransformersBackend) -> None:
    long_text = "word " * 400
    refused, truncated = backend.embed([Embed("long", ["short", long_text]), Embed("trunc", [long_text], truncate=True)])
    assert refused.vectors is None and refused.error is not None
    assert refused.error.code == ErrorCode.BAD_REQUEST and refused.error.param == "input"
    assert refused.error.message == "input 1 has 402 tokens; the model's limit is 256"
    assert truncated.error is None and truncated.vectors is not None
    assert truncated.vectors.shape == (1, 384)
    assert truncated.token_counts == [256]  # what the model read


def test_batch_of_requests_is_split_in_order(backend: SentenceTransformersBackend) -> None:
    sentences = [f"Sentence number {i} is about {topic}." for i, topic in
                 enumerate(["cats", "the weather", "football", "cooking pasta", "quantum physics", "trains"])]
    batch = [
        Embed("a", sentences[0:1]),
        Embed("b", sentences[1:4]),
        Embed("bad", ["x"], dimensions=1000),  # one bad request must not fail the others
        Embed("c", sentences[4:6], dimensions=128),
    ]
    outcomes = backend.embed(batch)
    assert len(outcomes) == 4
    assert outcomes[2].error is not None and outcomes[2].vectors is None
    # Each request's vectors equal what it gets when encoded alone.
    for request, outcome in zip(batch, outcomes, strict=True):
        if request.request_id == "bad":
            continue
        [alone] = backend.embed([request])
        assert outcome.error is None and outcome.vectors is not None and alone.vectors is not None
        assert outcome.vectors.shape == (len(request.texts), request.dimensions or 384)
        np.testing.assert_allclose(outcome.vectors, alone.vectors, atol=1e-5)
        assert outcome.token_counts == alone.token_counts
        assert len(outcome.token_counts) == len(request.texts)


def test_unload_and_reload() -> None:
    instance = SentenceTransformersBackend("all-MiniLM-L6-v2", "all-MiniLM-L6-v2", {"threads": 1})
    instance.load()
    [before] = instance.embed([Embed("x", ["hello there"])])
    instance.unload()
    assert not instance.loaded
    instance.load()
    [after] = instance.embed([Embed("y", ["hello there"])])
    assert before.vectors is not None and after.vectors is not None
    np.testing.assert_allclose(before.vectors, after.vectors, atol=1e-6)
