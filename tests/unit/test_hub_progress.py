"""Download progress as a person sees it: a bar on a terminal, log lines otherwise, the gateway's sink."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest

from workers.hub import DownloadMonitor, human_bytes


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_counts_finished_files_and_the_partial_blob(tmp_path: Path) -> None:
    (tmp_path / "abc.incomplete").write_bytes(b"x" * 250_000)
    screen = Terminal()
    sent: list[dict[str, Any]] = []
    monitor = DownloadMonitor("org/repo:Q4_K_M", 1_000_000, tmp_path, lambda state, **kw: sent.append(kw),
                              stream=screen)
    monitor.file_done(250_000)
    monitor.report()
    assert "\rorg/repo:Q4_K_M [" in screen.getvalue() and "] 50% 500.0 KB/1.0 MB" in screen.getvalue()
    assert sent[-1]["done_bytes"] == 500_000 and sent[-1]["total_bytes"] == 1_000_000
    monitor.report(final=True)
    assert screen.getvalue().endswith("\n") and sent[-1]["done_bytes"] == 1_000_000


def test_log_lines_when_not_a_terminal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monitor = DownloadMonitor("org/repo", 2_000_000, tmp_path, None, stream=io.StringIO())
    monitor.file_done(500_000)
    with caplog.at_level(logging.INFO, logger="acore.worker.hub"):
        monitor.report()
        monitor.report()  # within LOG_EVERY_S of the first: not logged again
        monitor.report(final=True)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("downloading org/repo: 500.0 KB of 2.0 MB (25%), ")
    assert len(lines) == 2 and lines[1].endswith(" - done") and "(100%)" in lines[1]


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (512, 1_500, 2_500_000, 7_300_000_000)] == ["512 B", "1.5 KB", "2.5 MB", "7.3 GB"]
