"""ZIP pre-scan for OOXML (DOCX/XLSX/PPTX) before any parser opens the archive.

Declared sizes come from the central directory, which an attacker writes; so
besides the totals we refuse entries whose ratio is absurd, and the parsers
themselves run under the child's memory limit in case a header lies.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

from media.errors import too_large, unprocessable


@dataclass(frozen=True, slots=True)
class ZipLimits:
    max_entries: int
    max_uncompressed: int
    max_ratio: int


def prescan(data: bytes, limits: ZipLimits) -> str:
    """Check the archive and return its OOXML kind: 'docx', 'xlsx' or 'pptx'."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise unprocessable("The file is not a valid ZIP/Office document.") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise too_large(f"The document has too many ZIP entries ({len(infos)} > {limits.max_entries}).")
        total = 0
        names: set[str] = set()
        for info in infos:
            name = info.filename
            if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") or ":" in name:
                raise unprocessable("The document has an unsafe entry name.")
            total += info.file_size
            if total > limits.max_uncompressed:
                raise too_large(f"The document expands past {limits.max_uncompressed} bytes.")
            if info.file_size > 1 << 20 and info.file_size > max(info.compress_size, 1) * limits.max_ratio:
                raise too_large("The document has an entry with a suspicious compression ratio.")
            names.add(name)
        # OOXML never carries a DTD; one in a part is a billion-laughs or XXE attempt.
        for info in infos:
            if info.filename.endswith((".xml", ".rels")) or info.filename == "[Content_Types].xml":
                with archive.open(info) as part:
                    head = part.read(65536)
                if b"<!DOCTYPE" in head or b"<!ENTITY" in head:
                    raise unprocessable("The document contains a DTD or entity declarations, which are refused.")
    if "word/document.xml" in names:
        return "docx"
    if "xl/workbook.xml" in names:
        return "xlsx"
    if "ppt/presentation.xml" in names:
        return "pptx"
    raise unprocessable("The ZIP file is not a DOCX, XLSX or PPTX document.")
