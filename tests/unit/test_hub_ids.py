"""Hub ids: their syntax, the engine and name they mean, and which files of a repo an engine takes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protocol.hub_ids import HubId, parse_hub_id
from protocol.local import default_name, resolve_engine
from workers.backend import ModelLoadError
from workers.hub import available_quants, select_files


def test_parse_hub_ids_and_paths(tmp_path: Path) -> None:
    assert parse_hub_id("Qwen/Qwen3-0.6B") == HubId("Qwen/Qwen3-0.6B")
    assert parse_hub_id("Qwen/Qwen3-4B-GGUF:Q4_K_M") == HubId("Qwen/Qwen3-4B-GGUF", quant="Q4_K_M")
    assert parse_hub_id("unsloth/Qwen3-4B-GGUF/Q8_0/Qwen3-4B-Q8_0-00001-of-00002.gguf") == HubId(
        "unsloth/Qwen3-4B-GGUF", file="Q8_0/Qwen3-4B-Q8_0-00001-of-00002.gguf")
    for path in ("/models/x.gguf", "./dir/model", "~/m", "model.gguf", "all-MiniLM-L6-v2", "a/b/c", "-a/b"):
        assert parse_hub_id(path) is None, path
    local = tmp_path / "org"
    (local / "repo").mkdir(parents=True)
    assert parse_hub_id(str(local / "repo")) is None


def test_engine_and_default_name_of_hub_ids(tmp_path: Path) -> None:
    assert resolve_engine("huggingface", "Qwen/Qwen3-0.6B") == "transformers"
    assert default_name("huggingface", "Qwen/Qwen3-0.6B") == "Qwen3-0.6B"
    assert resolve_engine("huggingface", "Qwen/Qwen3-4B-GGUF:Q4_K_M") == "llamacpp"
    assert default_name("llamacpp", "Qwen/Qwen3-4B-GGUF:Q4_K_M") == "Qwen3-4B-GGUF"
    assert default_name("llamacpp", "org/repo/sub/Model-Q8_0-00001-of-00003.gguf") == "Model-Q8_0"
    assert default_name("mlx", "mlx-community/Qwen3-4B-4bit") == "Qwen3-4B-4bit"
    # sentence-transformers keeps its meaning and its name (the model id)
    assert resolve_engine("huggingface", "sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers"
    assert default_name("sentence-transformers", "BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    st = tmp_path / "st-model"
    st.mkdir()
    (st / "modules.json").write_text("[]")
    assert resolve_engine("huggingface", str(st)) == "sentence-transformers"
    lm = tmp_path / "lm-model"
    lm.mkdir()
    (lm / "config.json").write_text("{}")
    assert resolve_engine("huggingface", str(lm)) == "transformers"
    assert default_name("huggingface", str(lm)) == "lm-model"
    assert resolve_engine("huggingface", str(tmp_path / "x.gguf")) == "llamacpp"


def test_cached_sentence_transformers_repo_stays_an_embeddings_model(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    snapshot = tmp_path / "hub" / "models--BAAI--bge-small-en-v1.5" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "modules.json").write_text("[]")
    assert resolve_engine("huggingface", "BAAI/bge-small-en-v1.5") == "sentence-transformers"
    # named by its repo under huggingface, cached or not (the gateway names it before any download)
    assert default_name("huggingface", "BAAI/bge-small-en-v1.5") == "bge-small-en-v1.5"
    assert default_name("huggingface", "sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


GGUF_REPO = {"README.md": 1, "Qwen3-4B-Q4_K_M.gguf": 10, "Qwen3-4B-Q8_0.gguf": 20, "Qwen3-4B-Q4_K_S.gguf": 9,
             "mmproj-F16.gguf": 5, "BF16/Qwen3-4B-BF16-00001-of-00002.gguf": 30,
             "BF16/Qwen3-4B-BF16-00002-of-00002.gguf": 30}


def test_gguf_by_quant_default_and_split() -> None:
    hub = HubId("Qwen/Qwen3-4B-GGUF", quant="q8_0")
    assert select_files("llamacpp", hub, GGUF_REPO).files == ["Qwen3-4B-Q8_0.gguf"]
    # no quant: llama-server's Q4_K_M; Q4_K_M never matches Q4_K_S or the projector
    assert select_files("llamacpp", HubId("Qwen/Qwen3-4B-GGUF"), GGUF_REPO).primary == "Qwen3-4B-Q4_K_M.gguf"
    split = select_files("llamacpp", HubId("Qwen/Qwen3-4B-GGUF", quant="BF16"), GGUF_REPO)
    assert split.primary == "BF16/Qwen3-4B-BF16-00001-of-00002.gguf"
    assert split.files == ["BF16/Qwen3-4B-BF16-00001-of-00002.gguf", "BF16/Qwen3-4B-BF16-00002-of-00002.gguf"]
    with pytest.raises(ModelLoadError, match=re.escape("incomplete: missing BF16/Qwen3-4B-BF16-00002-of-00002.gguf")):
        select_files("llamacpp", HubId("Qwen/Qwen3-4B-GGUF", quant="BF16"),
                     {k: v for k, v in GGUF_REPO.items() if "BF16-00002-" not in k})


def test_missing_quant_names_what_the_repo_has() -> None:
    with pytest.raises(ModelLoadError) as err:
        select_files("llamacpp", HubId("Qwen/Qwen3-4B-GGUF", quant="Q2_K"), GGUF_REPO)
    assert "no GGUF for quant 'Q2_K'; its quants: BF16, Q4_K_M, Q4_K_S, Q8_0" in str(err.value)
    assert available_quants(["m-UD-Q4_K_XL.gguf", "m-IQ2_XXS.gguf", "m-f16.gguf"]) == ["UD-Q4_K_XL", "IQ2_XXS", "F16"]


def test_folder_models_take_weights_config_and_tokenizer_only() -> None:
    repo = {"config.json": 1, "generation_config.json": 1, "tokenizer.json": 1, "tokenizer_config.json": 1,
            "model-00001-of-00002.safetensors": 9, "model-00002-of-00002.safetensors": 9,
            "model.safetensors.index.json": 1, "pytorch_model.bin": 18, "onnx/model.onnx": 18, "README.md": 1,
            "original/consolidated.pth": 18, "merges.txt": 1, "chat_template.jinja": 1}
    chosen = select_files("transformers", HubId("org/model"), repo).files
    assert chosen == ["chat_template.jinja", "config.json", "generation_config.json", "merges.txt",
                      "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                      "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    only_bin = {"config.json": 1, "pytorch_model.bin": 5, "vocab.txt": 1}
    assert "pytorch_model.bin" in select_files("transformers", HubId("org/old"), only_bin).files
    with pytest.raises(ModelLoadError, match="no mlx weights"):
        select_files("mlx", HubId("org/old"), only_bin)
    with pytest.raises(ModelLoadError, match=re.escape("--provider llamacpp --model org/gguf:QUANT")):
        select_files("transformers", HubId("org/gguf"), {"m-Q4_K_M.gguf": 1})
    with pytest.raises(ModelLoadError, match=re.escape("no config.json")):
        select_files("transformers", HubId("org/x"), {"model.safetensors": 1})


def test_piper_voice_ids() -> None:
    from protocol.hub_ids import parse_hub_id
    from protocol.local import default_name, resolve_engine

    voice = parse_hub_id("rhasspy/piper-voices/en/en_US/lessac/medium/en_US-lessac-medium.onnx")
    assert voice is not None and voice.repo == "rhasspy/piper-voices" and voice.piper_voice and not voice.gguf
    assert voice.file == "en/en_US/lessac/medium/en_US-lessac-medium.onnx"
    assert voice.default_name == "en_US-lessac-medium"
    assert default_name("tts", str(voice)) == "en_US-lessac-medium"
    assert resolve_engine("tts", str(voice)) == "tts"
    assert parse_hub_id("ORG/REPO/model.gguf").gguf  # type: ignore[union-attr]
