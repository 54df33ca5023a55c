"""Media routes on local workers: speech's time to first audio byte, and transcription through the
gateway against the same model in-process.

    .venv/bin/python scripts/bench/media_routes.py            # ~2 minutes
    .venv/bin/python scripts/bench/media_routes.py --quick

One ``acore-gateway`` supervising ``tts:espeak-ng`` and ``whisper:<tiny random Whisper>`` (built
here, workers/tiny_media.py). Speech: POST /v1/audio/speech (wav) of a ~25 s text; the client
notes when the first audio byte and the last arrive; the baseline is the same synthesis
in-process (workers/tts_backend.py), first block and end. Transcription: the same 5 s WAV through
/v1/audio/transcriptions and through ``WhisperBackend.transcribe`` in this process, interleaved
round by round; medians and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from protocol.messages import Speak, Transcribe  # noqa: E402
from tests import http as test_http  # noqa: E402
from tests.media_files import wav_bytes  # noqa: E402
from tests.procs import start_gateway  # noqa: E402
from workers.tiny_media import write_tiny_whisper  # noqa: E402
from workers.tts_backend import TTSBackend  # noqa: E402
from workers.whisper_backend import WhisperBackend  # noqa: E402

TEXT = ("The gateway relays speech to the client while the worker is still synthesising it, "
        "so the listener hears the first words before the last ones exist. ") * 4
BOUNDARY = "benchboundary"


def speech_once(port: int) -> tuple[float, float, int]:
    """(seconds to the first audio byte, seconds to the last, bytes) of one streamed request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = test_http.json.dumps({"model": "tts/espeak-ng", "input": TEXT, "voice": "alloy", "response_format": "wav"})
    started = time.perf_counter()
    connection.request("POST", "/v1/audio/speech", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    first = response.read1(65536)
    first_at = time.perf_counter() - started
    size = len(first)
    while chunk := response.read1(65536):
        size += len(chunk)
    total = time.perf_counter() - started
    connection.close()
    assert response.status == 200 and first[:4] == b"RIFF", response.status
    return first_at, total, size


def speech_in_process(backend: TTSBackend) -> tuple[float, float]:
    marks: list[float] = []
    started = time.perf_counter()
    backend.speak(Speak(request_id="b", input=TEXT), lambda samples, rate: marks.append(time.perf_counter()),
                  lambda: False)
    return marks[0] - started, time.perf_counter() - started


def transcribe_once(port: int, audio: bytes) -> float:
    form = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper/tiny-whisper\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="b.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n").encode() + audio + f"\r\n--{BOUNDARY}--\r\n".encode()
    started = time.perf_counter()
    reply = test_http.post(f"http://127.0.0.1:{port}/v1/audio/transcriptions", content=form, timeout=120,
                           headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert reply.status == 200, reply.text
    return time.perf_counter() - started


def med(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    rounds = 3 if options.quick else options.rounds
    with tempfile.TemporaryDirectory() as scratch:
        model = write_tiny_whisper(Path(scratch) / "tiny-whisper")
        # one thread for torch on both sides: on a small shared machine more threads only add noise
        gateway = start_gateway(Path(scratch), env={"OMP_NUM_THREADS": "1"}, timeout=60,
                                extra_args=["--worker", "tts:espeak-ng", "--worker", f"whisper:{model}"])
        try:
            port = int(gateway.url.rsplit(":", 1)[1])
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                models = test_http.get_json(gateway.url + "/v1/models")["data"]
                if {"tts/espeak-ng", "whisper/tiny-whisper"} <= {m["id"] for m in models if m.get("state") == "ready"}:
                    break
                time.sleep(0.2)
            tts = TTSBackend("espeak-ng", "espeak-ng", {})
            tts.load()
            whisper = WhisperBackend(str(model), "tiny-whisper", {"threads": 1})
            whisper.load()
            audio = wav_bytes(5.0)
            speech_once(port)  # warm every path once
            transcribe_once(port, audio)
            whisper.transcribe(Transcribe(request_id="w"), audio)
            first, total, local_first, local_total, size = [], [], [], [], 0
            through, inproc, ratios = [], [], []
            for round_ in range(rounds):
                first_at, total_at, size = speech_once(port)
                first.append(first_at)
                total.append(total_at)
                local_at, local_end = speech_in_process(tts)
                local_first.append(local_at)
                local_total.append(local_end)
                pair = [("gw", lambda: transcribe_once(port, audio)),
                        ("in", lambda: _timed(lambda: whisper.transcribe(Transcribe(request_id="w"), audio)))]
                results = {name: fn() for name, fn in (pair if round_ % 2 == 0 else pair[::-1])}
                through.append(results["gw"])
                inproc.append(results["in"])
                ratios.append(results["gw"] / results["in"])
        finally:
            gateway.stop()
    seconds = (size - 44) / 2 / 22050
    print(f"speech: {seconds:.1f} s of audio ({size} bytes), {rounds} rounds, medians")
    print("| path | first audio byte ms | whole answer ms | first / whole |")
    print("|---|---:|---:|---:|")
    print(f"| through the gateway (client side) | {med(first) * 1000:.1f} | {med(total) * 1000:.1f} | "
          f"{med(first) / med(total):.2f} |")
    print(f"| in-process synthesis (first block, end) | {med(local_first) * 1000:.1f} | {med(local_total) * 1000:.1f} "
          f"| {med(local_first) / med(local_total):.2f} |")
    print(f"\ntranscription: 5 s WAV, tiny random Whisper, {rounds} rounds interleaved, medians")
    print("| path | ms | ratio to in-process (paired median) |")
    print("|---|---:|---:|")
    print(f"| in-process WhisperBackend.transcribe | {med(inproc) * 1000:.0f} | 1.00 |")
    print(f"| POST /v1/audio/transcriptions through the gateway | {med(through) * 1000:.0f} | {med(ratios):.2f} |")


def _timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
