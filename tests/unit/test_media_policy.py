"""The local-path rule: off by default, real path under a root, regular files only, one message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from media.errors import MediaError
from media.policy import FORBIDDEN_PATH, MediaPolicy


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "notes.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("outside")
    return tmp_path / "root"


def test_local_paths_off_without_roots(root: Path) -> None:
    with pytest.raises(MediaError) as info:
        MediaPolicy().read_local(str(root / "notes.txt"))
    assert info.value.status == 403


def test_reads_file_under_root_absolute_and_relative(root: Path) -> None:
    policy = MediaPolicy(roots=(str(root),))
    assert policy.read_local(str(root / "notes.txt"))[0] == b"inside"
    assert policy.read_local("notes.txt")[0] == b"inside"


@pytest.mark.parametrize("path", ["/etc/passwd", "../secret.txt", "../../etc/passwd", "/proc/self/environ",
                                  "missing.txt", "/nonexistent/x"])
def test_same_403_for_forbidden_and_missing(root: Path, path: str) -> None:
    policy = MediaPolicy(roots=(str(root),))
    with pytest.raises(MediaError) as info:
        policy.read_local(path)
    assert info.value.status == 403
    assert info.value.message == FORBIDDEN_PATH


def test_symlink_escape_refused(root: Path) -> None:
    (root / "link.txt").symlink_to(root.parent / "secret.txt")
    (root / "environ.txt").symlink_to("/proc/self/environ")
    policy = MediaPolicy(roots=(str(root),))
    for name in ("link.txt", "environ.txt"):
        with pytest.raises(MediaError) as info:
            policy.read_local(name)
        assert info.value.status == 403 and info.value.message == FORBIDDEN_PATH


def test_dev_zero_and_fifo_refused_without_blocking(root: Path) -> None:
    (root / "zero.txt").symlink_to("/dev/zero")
    os.mkfifo(root / "pipe.txt")  # nobody writes: a blocking open or read would hang the test
    policy = MediaPolicy(roots=(str(root),))
    for name in ("zero.txt", "pipe.txt"):
        with pytest.raises(MediaError) as info:
            policy.read_local(name)
        assert info.value.status == 403
    assert policy.is_allowed_file("pipe.txt") is None


def test_root_with_devices_is_still_refused(tmp_path: Path) -> None:
    policy = MediaPolicy(roots=("/",))  # an operator mistake must not open /dev or /proc
    for path in ("/dev/zero", "/proc/self/environ"):
        with pytest.raises(MediaError) as info:
            policy.read_local(path)
        assert info.value.status == 403


def test_size_cap(root: Path) -> None:
    (root / "big.txt").write_bytes(b"x" * 2048)
    policy = MediaPolicy(roots=(str(root),), max_file_bytes=1024)
    with pytest.raises(MediaError) as info:
        policy.read_local("big.txt")
    assert info.value.status == 413


def test_directory_refused(root: Path) -> None:
    (root / "sub").mkdir()
    with pytest.raises(MediaError) as info:
        MediaPolicy(roots=(str(root),)).read_local("sub")
    assert info.value.status == 403
