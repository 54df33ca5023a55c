"""Turning one file's bytes into what the model sees. Runs in the parse child.

Text output is headed by the file name; when a cap cuts the content the text
says so, so the model never mistakes a truncated table for the whole one.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from media.errors import MediaError, bad, too_large, unprocessable
from media.ooxml import ZipLimits, prescan
from media.policy import MediaPolicy

TEXT_EXT = {".txt": "text", ".md": "markdown", ".markdown": "markdown", ".json": "json", ".xml": "xml",
            ".plist": "xml", ".xhtml": "xml", ".svg": "xml", ".csv": "csv", ".tsv": "tsv"}
DOC_EXT = {".pdf": "pdf", ".docx": "docx", ".xlsx": "xlsx", ".pptx": "pptx"}
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
SUPPORTED_EXT = set(TEXT_EXT) | set(DOC_EXT) | IMAGE_EXT
MIME_KIND = {
    "application/pdf": "pdf", "text/csv": "csv", "text/tab-separated-values": "tsv", "text/plain": "text",
    "text/markdown": "markdown", "application/json": "json", "application/xml": "xml", "text/xml": "xml",
    "application/xhtml+xml": "xml", "application/x-plist": "xml",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
}


@dataclass(frozen=True, slots=True)
class Extracted:
    """Either text for a text part, or an image data URL for an image part."""

    text: str | None = None
    image_url: str | None = None


def sniff(data: bytes, name: str, mime: str) -> str:
    """The kind of a file: magic bytes first (a client's name and MIME are only hints), then name, then MIME."""
    if data.startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        return "ooxml"
    if data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")) or (
        data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    ):
        return "image"
    ext = os.path.splitext(name.lower())[1]
    if ext in IMAGE_EXT or mime.startswith("image/"):
        return "image"  # claims to be an image but has no image magic: Pillow will refuse it
    if ext in DOC_EXT:
        return DOC_EXT[ext] if DOC_EXT[ext] == "pdf" else "ooxml"
    if ext in TEXT_EXT:
        return TEXT_EXT[ext]
    if mime in MIME_KIND:
        kind = MIME_KIND[mime]
        return "ooxml" if kind in ("docx", "xlsx", "pptx") else kind
    raise bad(f"Unsupported attachment type for {name!r} (supported: PDF, DOCX, XLSX, PPTX, CSV, TSV, TXT, MD, "
              "JSON, XML, PNG, JPEG, GIF, WEBP, BMP, TIFF).", code="unsupported_attachment")


class _Text:
    """Collects output up to a character cap and remembers that it cut."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.full = False

    def add(self, text: str) -> bool:
        if self.full:
            return False
        room = self.cap - self.size
        if len(text) > room:
            self.parts.append(text[:room])
            self.size = self.cap
            self.full = True
            return False
        self.parts.append(text)
        self.size += len(text)
        return True

    def value(self) -> str:
        return "".join(self.parts)


def _frame(name: str, label: str, body: str, notes: Iterable[str], cut: bool, cap: int) -> str:
    lines = [f"--- File: {name} ({label}) ---", body.rstrip("\n")]
    if cut:
        lines.append(f"[Truncated: only the first {cap} characters of {name} are shown.]")
    lines.extend(f"[{note}]" for note in notes)
    lines.append(f"--- End of {name} ---")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\r", " ").replace("\n", " ").replace("|", "\\|").strip()


def _table(rows: list[list[Any]]) -> str:
    if not rows:
        return "(empty)\n"
    width = max(len(r) for r in rows)
    lines = []
    for index, row in enumerate(rows):
        cells = [_cell(v) for v in row] + [""] * (width - len(row))
        lines.append("| " + " | ".join(cells) + " |")
        if index == 0:
            lines.append("|" + "---|" * width)
    return "\n".join(lines) + "\n"


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="replace").replace("\x00", "")


def extract_pdf(data: bytes, name: str, policy: MediaPolicy) -> str:
    import pypdf
    from pypdf.errors import LimitReachedError, PyPdfError

    # pypdf's defaults allow 75 MB per stream; our whole budget is one file.
    cap = policy.max_file_bytes
    if hasattr(pypdf, "overwrite_configuration"):  # pypdf >= 7: a Configuration object
        pypdf.overwrite_configuration(
            disable_legacy_handling=True,
            maximum_declared_stream_length=cap, array_based_stream_maximum_output_length=cap,
            jbig2_maximum_output_length=cap, lzw_maximum_output_length=cap, run_length_maximum_output_length=cap,
            zlib_maximum_output_length=cap, brotli_maximum_output_length=cap, image_maximum_buffer_size=cap,
            stream_decoding_work_maximum_length=4 * cap, xfa_decoding_work_maximum_length=4 * cap,
        )
    else:  # pypdf 6.x: module constants
        import pypdf.filters as filters

        for attr in ("ZLIB_MAX_OUTPUT_LENGTH", "LZW_MAX_OUTPUT_LENGTH", "JBIG2_MAX_OUTPUT_LENGTH",
                     "RUN_LENGTH_MAX_OUTPUT_LENGTH", "MAX_ARRAY_BASED_STREAM_OUTPUT_LENGTH",
                     "MAX_DECLARED_STREAM_LENGTH"):
            if hasattr(filters, attr):
                setattr(filters, attr, min(getattr(filters, attr), cap))
    out = _Text(policy.max_text_chars)
    notes: list[str] = []
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        # Only an owner password (printing, copying restrictions) with an empty user password: every viewer
        # opens it without asking, so do we. A real (user) password stays refused.
        if reader.is_encrypted and not reader.decrypt(""):
            raise unprocessable(f"{name} is protected by a password.")
        count = len(reader.pages)
        shown = min(count, policy.max_pages)
        for index in range(shown):
            page = reader.pages[index]
            contents = page.get_contents()
            if contents is not None:
                # extract_text() swallows a decompression limit and returns "", hiding a bomb: decode first
                # (the decoded data is cached on the object, so this is not done twice).
                contents.get_data()
            text = page.extract_text() or ""
            if not out.add(f"\n[Page {index + 1}]\n{text.strip()}\n"):
                notes.append(f"Stopped at page {index + 1} of {count}.")
                break
        if shown < count and not out.full:
            notes.append(f"Only the first {shown} of {count} pages are shown.")
    except MediaError:
        raise
    except LimitReachedError:
        raise too_large(f"{name} decompresses past the size limit.") from None
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError, OSError,
            AssertionError, ZeroDivisionError, OverflowError):
        # pypdf counts uncaught exceptions as bugs, not vulnerabilities: the caller catches them.
        raise unprocessable(f"{name} could not be read as a PDF.") from None
    return _frame(name, f"PDF, {count} pages", out.value(), notes, out.full, policy.max_text_chars)


def _docx(data: bytes, name: str, policy: MediaPolicy) -> str:
    import docx
    from docx.table import Table

    document = docx.Document(io.BytesIO(data))
    out = _Text(policy.max_text_chars)
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            rows = [[cell.text for cell in row.cells][: policy.max_columns] for row in block.rows[: policy.max_rows]]
            ok = out.add("\n" + _table(rows) + "\n")
        else:
            ok = out.add(block.text + "\n")
        if not ok:
            break
    return _frame(name, "DOCX", out.value(), (), out.full, policy.max_text_chars)


def _xlsx(data: bytes, name: str, policy: MediaPolicy) -> str:
    import openpyxl
    from openpyxl.worksheet._read_only import ReadOnlyWorksheet

    # openpyxl's read-only sheet parses the whole sheet at open time when <dimension> is missing (files
    # written by openpyxl and many tools omit it): 15 s for 10 MB. We stop at the row cap and pad rows
    # ourselves, so the dimensions are not needed; without them iter_rows simply yields rows as stored.
    ReadOnlyWorksheet._get_size = lambda self: None  # type: ignore[method-assign]
    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    out = _Text(policy.max_text_chars)
    notes: list[str] = []
    try:
        for sheet in workbook.worksheets:
            rows: list[list[Any]] = []
            cut = False
            for row in sheet.iter_rows(values_only=True):
                if len(rows) >= policy.max_rows:
                    cut = True
                    break
                rows.append(list(row[: policy.max_columns]))
            while rows and all(v is None for v in rows[-1]):
                rows.pop()
            if cut:
                notes.append(f"Sheet {sheet.title!r}: only the first {policy.max_rows} rows are shown.")
            if not out.add(f"\n## Sheet: {sheet.title}\n" + _table(rows)):
                break
    finally:
        workbook.close()
    return _frame(name, "XLSX", out.value(), notes, out.full, policy.max_text_chars)


def _pptx(data: bytes, name: str, policy: MediaPolicy) -> str:
    import pptx

    presentation = pptx.Presentation(io.BytesIO(data))
    out = _Text(policy.max_text_chars)
    for number, slide in enumerate(presentation.slides, 1):
        texts: list[str] = []
        for shape in slide.shapes:
            if getattr(shape, "has_text_frame", False) and shape.text_frame.text.strip():
                texts.append(shape.text_frame.text)
            if getattr(shape, "has_table", False):
                rows = [[c.text for c in r.cells][: policy.max_columns] for r in shape.table.rows]
                texts.append(_table(rows[: policy.max_rows]))
        block = f"\n[Slide {number}]\n" + "\n".join(texts) + "\n"
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = slide.notes_slide.notes_text_frame.text.strip()
            if notes:
                block += f"Notes: {notes}\n"
        if not out.add(block):
            break
    return _frame(name, "PPTX", out.value(), (), out.full, policy.max_text_chars)


def extract_ooxml(data: bytes, name: str, policy: MediaPolicy) -> str:
    kind = prescan(data, ZipLimits(policy.max_zip_entries, policy.max_zip_uncompressed, policy.max_zip_ratio))
    handler = {"docx": _docx, "xlsx": _xlsx, "pptx": _pptx}[kind]
    try:
        return handler(data, name, policy)
    except MediaError:
        raise
    except MemoryError:
        raise too_large(f"{name} needs too much memory to read.") from None
    except Exception:  # the OOXML libraries raise many types on malformed parts
        raise unprocessable(f"{name} could not be read as {kind.upper()}.") from None


def extract_delimited(data: bytes, name: str, policy: MediaPolicy, delimiter: str) -> str:
    text = _decode(data)
    # The file itself is capped (max_file_bytes), so any one field fits in memory; a long one (an export
    # with a whole document in a cell) is cut with a notice rather than refusing the file.
    csv.field_size_limit(max(len(text), 1))
    cell_cap = policy.max_cell_chars
    rows: list[list[str]] = []
    notes: list[str] = []
    wide = False
    cut_cells = 0
    try:
        for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
            if len(rows) >= policy.max_rows:
                notes.append(f"Only the first {policy.max_rows} rows are shown.")
                break
            if len(row) > policy.max_columns:
                wide = True
            kept = row[: policy.max_columns]
            for index, cell in enumerate(kept):
                if len(cell) > cell_cap:
                    kept[index] = cell[:cell_cap] + " [...]"
                    cut_cells += 1
            rows.append(kept)
    except csv.Error:
        raise unprocessable(f"{name} could not be read as {'TSV' if delimiter == chr(9) else 'CSV'}.") from None
    if wide:
        notes.append(f"Only the first {policy.max_columns} columns are shown.")
    if cut_cells:
        notes.append(f"{cut_cells} cell(s) longer than {cell_cap} characters were cut; [...] marks the cut.")
    out = _Text(policy.max_text_chars)
    out.add(_table(rows))
    return _frame(name, "TSV" if delimiter == "\t" else "CSV", out.value(), notes, out.full, policy.max_text_chars)


def extract_text(data: bytes, name: str, policy: MediaPolicy, kind: str) -> str:
    text = _decode(data)
    if kind == "xml":
        import defusedxml.ElementTree as DET
        from defusedxml import DefusedXmlException

        try:
            # A DOCTYPE alone (plist, XHTML) is harmless: expat fetches no external DTD. Entity declarations
            # (billion laughs) and external entities (XXE) stay forbidden.
            DET.fromstring(text.encode("utf-8"), forbid_dtd=False, forbid_entities=True, forbid_external=True)
        except DefusedXmlException:
            raise unprocessable(f"{name}: XML with entity declarations is refused.") from None
        except Exception:
            raise unprocessable(f"{name} is not well-formed XML.") from None
    out = _Text(policy.max_text_chars)
    out.add(text)
    return _frame(name, kind.upper(), out.value(), (), out.full, policy.max_text_chars)


def extract(data: bytes, name: str, mime: str, policy: MediaPolicy, want_image: bool = False) -> Extracted:
    """The child's entry point: bytes in, text or a normalised image out."""
    kind = sniff(data, name, mime)
    if want_image and kind != "image":
        raise bad(f"{name} is not an image.", code="not_an_image")
    if kind == "image":
        from media.images import normalise

        url, _w, _h = normalise(data, policy.max_image_pixels, policy.max_image_side, policy.max_jpeg_pixels)
        return Extracted(image_url=url)
    if kind == "pdf":
        return Extracted(text=extract_pdf(data, name, policy))
    if kind == "ooxml":
        return Extracted(text=extract_ooxml(data, name, policy))
    if kind in ("csv", "tsv"):
        return Extracted(text=extract_delimited(data, name, policy, "\t" if kind == "tsv" else ","))
    return Extracted(text=extract_text(data, name, policy, kind))
