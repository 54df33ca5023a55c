"""Who may read what: the local-path rule and the limits every attachment obeys.

Local paths are off unless the operator lists roots. When on, the real path
(symlinks resolved) must sit under a root and be a regular file; the file is
opened with O_NOFOLLOW|O_NONBLOCK and checked with fstat on the opened fd, so a
swap between the check and the open (symlink race, FIFO) cannot get through.
Every refusal uses one message, so the answer never tells whether a path exists.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from media.errors import MediaError, forbidden, too_large

FORBIDDEN_PATH = "Access to this path is not allowed."
# Never readable, whatever the roots say: kernel and device trees.
_NEVER = ("/proc", "/sys", "/dev")


@dataclass(frozen=True, slots=True)
class MediaPolicy:
    roots: tuple[str, ...] = ()
    url_allowlist: tuple[str, ...] = ()
    max_file_bytes: int = 10 * 1024 * 1024
    max_request_bytes: int = 32 * 1024 * 1024
    max_image_side: int = 2048
    # Pixels of an image decoded whole (PNG, GIF, ...: 4 bytes each in memory), and of a JPEG, which is
    # decoded already reduced (1/2 to 1/8 scale, Pillow's draft) since it is shrunk to max_image_side anyway.
    max_image_pixels: int = 100_000_000
    max_jpeg_pixels: int = 400_000_000
    max_cell_chars: int = 10_000  # one CSV/TSV cell as the model sees it (longer ones are cut)
    max_text_chars: int = 200_000  # per file, as the model sees it
    max_rows: int = 2_000  # per sheet / CSV
    max_columns: int = 100
    max_pages: int = 2_000
    max_zip_entries: int = 5_000
    max_zip_uncompressed: int = 200 * 1024 * 1024
    max_zip_ratio: int = 200
    fetch_timeout_s: float = 20.0
    max_redirects: int = 3
    parse_timeout_s: float = 30.0
    parse_cpu_s: int = 20
    parse_memory_bytes: int = 1536 * 1024 * 1024
    parse_workers: int = 2
    real_roots: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        # Resolve roots once: a root that is itself a symlink is the operator's choice.
        real = tuple(os.path.realpath(r) for r in self.roots if r)
        object.__setattr__(self, "real_roots", real)

    @property
    def local_enabled(self) -> bool:
        return bool(self.real_roots)

    def candidates(self, path: str) -> list[str]:
        """Absolute paths a client path may mean: itself when absolute, else joined to each root."""
        if os.path.isabs(path):
            return [path]
        return [os.path.join(root, path) for root in self.real_roots]

    def allowed_real_path(self, path: str) -> str | None:
        """The real path when it lies under a root and is not in a kernel tree, else None (no I/O beyond realpath)."""
        if not self.real_roots or "\x00" in path:
            return None
        for candidate in self.candidates(path):
            real = os.path.realpath(candidate)
            if any(real == n or real.startswith(n + "/") for n in _NEVER):
                continue
            for root in self.real_roots:
                if real == root:
                    continue
                if os.path.commonpath([root, real]) == root:
                    return real
        return None

    def is_allowed_file(self, path: str) -> str | None:
        """For ``@path`` detection: the real path when it is an allowed regular file, else None."""
        real = self.allowed_real_path(path)
        if real is None:
            return None
        try:
            st = os.stat(real, follow_symlinks=False)
        except OSError:
            return None
        return real if stat.S_ISREG(st.st_mode) else None

    def read_local(self, path: str) -> tuple[bytes, str]:
        """Read an allowed local file (blocking; call it off the loop). Returns (data, real path)."""
        if not self.real_roots:
            raise forbidden("Local file access is disabled on this server.", code="local_files_disabled")
        real = self.allowed_real_path(path)
        if real is None:
            raise forbidden(FORBIDDEN_PATH)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(real, flags)
        except OSError:
            raise forbidden(FORBIDDEN_PATH) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # FIFO, device, socket, directory: never read
                raise forbidden(FORBIDDEN_PATH)
            if st.st_size > self.max_file_bytes:
                raise too_large(f"File is larger than {self.max_file_bytes} bytes.")
            chunks: list[bytes] = []
            total = 0
            while True:  # read to EOF but never past the cap (the file may grow under us)
                chunk = os.read(fd, min(1 << 20, self.max_file_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > self.max_file_bytes:
                    raise too_large(f"File is larger than {self.max_file_bytes} bytes.")
            return b"".join(chunks), real
        except MediaError:
            raise
        except OSError:
            raise forbidden(FORBIDDEN_PATH) from None
        finally:
            os.close(fd)
