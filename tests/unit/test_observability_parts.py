"""Observability pieces on their own: multiprocess metrics, label bounds, redaction, the log writer."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import GatewayError
from gateway.ops.metrics import OTHER, ModelLabels, RequestMetrics
from gateway.ops.redact import MASK, Redactor, data_url_summary
from gateway.ops.stats import RequestStats, error_kind
from gateway.ops.writer import FileSink, LogWriter
from tests.procs import REPO, base_env

RECORD = textwrap.dedent("""
    import sys
    from gateway.ops.metrics import RequestMetrics
    from gateway.ops.stats import RequestStats

    metrics = RequestMetrics(multiprocess=True)
    tokens = int(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        stats = RequestStats(0.0)
        stats.input_tokens, stats.output_tokens, stats.first_token = tokens, 1, 0.05
        metrics.record("/v1/chat/completions", "openai", "gpt-x", 200, stats, 0.2)
    metrics.in_flight_gauge.inc()
    print("ready", flush=True)
    if len(sys.argv) > 3:
        sys.stdin.read()  # stay alive: a live process's in-flight gauge counts
""")

SCRAPE = textwrap.dedent("""
    import sys
    from gateway.ops.metrics import LiveCollector, LiveState, RequestMetrics

    metrics = RequestMetrics(multiprocess=True)
    metrics.attach(LiveCollector(lambda: LiveState([], 0, 0, 0, None)))
    sys.stdout.write(metrics.exposition().decode())
""")


def _run(code: str, directory: Path) -> str:
    env = base_env({"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_multiprocess_values_are_summed_over_processes(tmp_path: Path) -> None:
    """Two processes write into one PROMETHEUS_MULTIPROC_DIR; a third serves the sum (MultiProcessCollector)."""
    env = base_env({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    alive = subprocess.Popen([sys.executable, "-c", RECORD, "7", "2", "stay"], cwd=REPO, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert alive.stdout is not None and alive.stdout.readline().strip() == "ready"
        ended = subprocess.Popen([sys.executable, "-c", RECORD, "5", "3"], cwd=REPO, env=env, stdout=subprocess.PIPE)
        assert ended.wait(60) == 0
        # What the --processes supervisor does when a front exits: its live gauges stop counting.
        mark_process_dead(ended.pid, str(tmp_path))
        samples = _samples(_run(SCRAPE, tmp_path))
    finally:
        assert alive.stdin is not None
        alive.stdin.close()
        alive.wait(30)
    route = frozenset({"route": "/v1/chat/completions", "provider": "openai", "model": "gpt-x", "status": "200"}.items())
    assert samples[("acore_requests_total", route)] == 5
    tokens = {"provider": "openai", "model": "gpt-x"}
    assert samples[("acore_tokens_total", frozenset({**tokens, "kind": "input"}.items()))] == 3 * 5 + 2 * 7
    assert samples[("acore_tokens_total", frozenset({**tokens, "kind": "output"}.items()))] == 5
    hist = frozenset({"route": "/v1/chat/completions", "provider": "openai", "model": "gpt-x"}.items())
    assert samples[("acore_request_duration_seconds_count", hist)] == 5
    assert samples[("acore_time_to_first_token_seconds_count", frozenset(tokens.items()))] == 5
    # livesum: only processes still running count (the first one exited)
    assert samples[("acore_in_flight_requests", frozenset())] == 1


def test_single_process_registry_is_per_instance() -> None:
    first, second = RequestMetrics(False), RequestMetrics(False)
    stats = RequestStats(0.0)
    stats.output_tokens = 4
    first.record("/v1/chat/completions", "openai", "m", 200, stats, 1.0)
    assert first.registry is not None and second.registry is not None
    assert first.registry.get_sample_value("acore_tokens_total",
                                           {"provider": "openai", "model": "m", "kind": "output"}) == 4
    assert second.registry.get_sample_value("acore_tokens_total",
                                            {"provider": "openai", "model": "m", "kind": "output"}) is None


def test_model_labels_are_bounded() -> None:
    labels = ModelLabels(limit=3)
    assert labels.label("openai", "random-1", served=False) == OTHER  # refused: never a label
    assert [labels.label("openai", f"m{i}", served=True) for i in range(5)] == ["m0", "m1", "m2", OTHER, OTHER]
    assert labels.label("openai", "m1", served=False) == "m1"  # once served, its errors keep its name
    assert labels.label("ollama", "m3", served=True) == "m3"  # the limit is per provider
    assert labels.label("openai", "", served=True) == ""


def test_usage_shapes_and_error_kinds() -> None:
    stats = RequestStats(0.0)
    stats.set_usage({"prompt_tokens": 9, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}})
    assert (stats.input_tokens, stats.output_tokens, stats.cached_tokens) == (9, 2, 4)
    stats.set_usage({"input_tokens": 3, "output_tokens": 1, "input_tokens_details": {"cached_tokens": 0}})
    assert (stats.input_tokens, stats.output_tokens, stats.cached_tokens) == (3, 1, 0)
    stats.set_usage(None)
    assert stats.input_tokens == 3
    assert error_kind(GatewayError(504, "x", code="upstream_timeout")) == "timeout"
    assert error_kind(GatewayError(429, "x", code="whatever-the-upstream-says")) == "rate_limited"
    assert error_kind(GatewayError(404, "x", code="model_gone")) == "rejected"
    assert error_kind(GatewayError(502, "x", code="upstream-specific")) == "server_error"


def test_redaction() -> None:
    redactor = Redactor(["configured-secret-123"])
    text = redactor.text('{"note": "configured-secret-123", "h": "Bearer abcdefghij", "k": "sk-live-abcdefgh12345678",'
                         ' "url": "/x?api_key=zzzz9999&b=1", "g": "AIza' + "x" * 35 + '"}', extra=["per-request-77"])
    for secret in ("configured-secret-123", "abcdefghij", "abcdefgh12345678", "zzzz9999", "x" * 35):
        assert secret not in text
    assert "&b=1" in text
    assert redactor.text("odd per-request-77 shape", ["per-request-77"]) == f"odd {MASK} shape"
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    value = redactor.value({"api_key": "anything", "Authorization": "x y", "messages": [
        {"content": [{"image_url": {"url": url}}, {"text": f"inline {url} here"}]}], "empty_api_key": None})
    assert value["api_key"] == MASK and value["Authorization"] == MASK
    assert value["messages"][0]["content"][0]["image_url"]["url"] == data_url_summary(url)
    assert data_url_summary(url) == {"type": "image/png", "size": len(png), "sha256": hashlib.sha256(png).hexdigest()}
    assert "base64" not in value["messages"][0]["content"][1]["text"]
    assert data_url_summary("https://example.com/x.png") is None


def test_file_sink_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "verbatim.jsonl"
    sink = FileSink(lambda record: record, path, max_bytes=100, backups=2)
    for index in range(10):
        sink.write(b"%02d" % index + b"x" * 38 + b"\n")  # 41 bytes a line: two lines a file
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verbatim.jsonl", "verbatim.jsonl.1", "verbatim.jsonl.2"]
    assert path.read_bytes().startswith(b"08") and len(path.read_bytes()) == 82
    assert (tmp_path / "verbatim.jsonl.2").read_bytes().startswith(b"04")


def test_log_writer_drops_and_counts_when_full(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(max_pending=5)
    sink = writer.add(FileSink(lambda record: record + b"\n", path, max_bytes=1 << 20))
    for index in range(8):
        writer.put(sink, b"line %d" % index)
    writer.put(sink, b"")  # nothing a render fails on: just one more (dropped) record
    assert writer.dropped == 4
    writer.start()
    writer.stop()
    assert path.read_text().splitlines() == [f"line {i}" for i in range(5)]
