"""Extraction from real files made by the libraries, and every parser bomb from security.md table E."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from media.errors import MediaError
from media.extract import extract
from media.ooxml import ZipLimits, prescan
from media.policy import MediaPolicy
from tests import media_files as files

POLICY = MediaPolicy()


def text_of(data: bytes, name: str, policy: MediaPolicy = POLICY) -> str:
    result = extract(data, name, "", policy)
    assert result.text is not None
    return result.text


def status_of(data: bytes, name: str, policy: MediaPolicy = POLICY) -> int:
    with pytest.raises(MediaError) as info:
        extract(data, name, "", policy)
    return info.value.status


def test_defusedxml_is_installed_and_used_by_openpyxl() -> None:
    import openpyxl.xml

    assert openpyxl.xml.DEFUSEDXML is True  # without it openpyxl parses billion laughs


def test_docx_paragraphs_and_tables() -> None:
    text = text_of(files.docx_bytes("Revenue grew by 42 percent."), "report.docx")
    assert text.startswith("--- File: report.docx (DOCX) ---")
    assert "Revenue grew by 42 percent." in text and "| Nordics | 1234 |" in text


def test_xlsx_sheets_as_tables_with_row_cap_stated() -> None:
    text = text_of(files.xlsx_bytes(rows=50, sheet="Budget"), "b.xlsx", MediaPolicy(max_rows=10))
    assert "## Sheet: Budget" in text and "| region-0 | 0 |" in text
    assert "region-20" not in text and "only the first 10 rows are shown" in text


def test_pptx_slide_text_and_notes() -> None:
    text = text_of(files.pptx_bytes("Launch plan", "zebra budget"), "deck.pptx")
    assert "[Slide 1]" in text and "Launch plan" in text and "Notes: zebra budget" in text


def test_pdf_per_page() -> None:
    text = text_of(files.pdf_bytes(pages=3, prefix="Hello"), "doc.pdf")
    assert "(PDF, 3 pages)" in text and "[Page 3]" in text and "Hello number 2" in text


def test_pdf_page_cap_stated() -> None:
    text = text_of(files.pdf_bytes(pages=4), "doc.pdf", MediaPolicy(max_pages=2))
    assert "Page text number 2" in text and "Page text number 3" not in text
    assert "Only the first 2 of 4 pages are shown." in text


def test_character_cap_stated() -> None:
    text = text_of(b"abcdefghij" * 100, "long.txt", MediaPolicy(max_text_chars=50))
    assert "[Truncated: only the first 50 characters of long.txt are shown.]" in text


def test_csv_tsv_json_md() -> None:
    assert "| a | b |" in text_of(b"a,b\n1,2\n", "t.csv")
    assert "| x | y |" in text_of(b"x\ty\n", "t.tsv")
    assert '{"k": [1, 2]}' in text_of(b'{"k": [1, 2]}', "d.json")
    assert "# Title" in text_of(b"# Title\n", "r.md")


def test_xml_through_defusedxml() -> None:
    assert "<a>1</a>" in text_of(b"<a>1</a>", "x.xml")
    assert status_of(files.LAUGHS.encode(), "laughs.xml") == 422
    assert status_of(b'<!DOCTYPE d [<!ENTITY e SYSTEM "http://127.0.0.1:9/">]><d>&e;</d>', "xxe.xml") == 422


def test_image_normalised_and_downscaled() -> None:
    result = extract(files.png_bytes(3000, 1000), "wide.png", "", MediaPolicy(max_image_side=300))
    assert result.image_url is not None and result.image_url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(result.image_url.split(",", 1)[1])))
    assert image.size == (300, 100)


def test_image_format_allowlist() -> None:
    from PIL import Image as PILImage

    out = io.BytesIO()
    PILImage.new("RGB", (4, 4)).save(out, format="ICO")  # a decoder outside the allowlist
    assert status_of(out.getvalue(), "x.png") == 422
    assert status_of(b"not an image at all", "x.png") == 422


def test_pixel_bomb() -> None:
    assert status_of(files.pixel_bomb_png(), "bomb.png") == 413
    # Between our cap and Pillow's default: our own check answers.
    assert status_of(files.pixel_bomb_png(8000, 8000), "big.png", MediaPolicy(max_image_pixels=10_000_000)) == 413


@pytest.mark.parametrize(("make", "name", "status"), [
    (files.zip_bomb_docx, "bomb.docx", 413),
    (files.many_entries_xlsx, "many.xlsx", 413),
    (files.slip_pptx, "slip.pptx", 422),
    (files.billion_laughs_xlsx, "laughs.xlsx", 422),
    (lambda: files.xxe_docx("http://127.0.0.1:9/"), "xxe.docx", 422),
])
def test_ooxml_attacks_refused(make: object, name: str, status: int) -> None:
    assert status_of(make(), name) == status  # type: ignore[operator]


def test_zip_prescan_rejects_before_parsing_totals() -> None:
    with pytest.raises(MediaError) as info:
        prescan(files.docx_bytes(), ZipLimits(max_entries=5000, max_uncompressed=1000, max_ratio=200))
    assert info.value.status == 413


def test_pdf_flate_bomb_and_circular_xref() -> None:
    assert status_of(files.pdf_flate_bomb(), "bomb.pdf") == 413
    text = text_of(files.pdf_circular_xref(), "loop.pdf")  # terminates; an empty page is all there is
    assert "(PDF, 1 pages)" in text


def test_csv_field_and_column_caps() -> None:
    long_field = text_of(b'"' + b"x" * 200_000 + b'"\n', "field.csv")  # cut with a notice, not refused
    assert "x" * 10_000 + " [...]" in long_field and "were cut" in long_field and len(long_field) < 11_000
    text = text_of(b"," * 2_000_000 + b"\n1,2\n", "wide.csv")
    assert "Only the first 100 columns are shown." in text
    assert "\x00" not in text_of(b"a,\x00b\n", "nul.csv")


def test_unsupported_type_is_400() -> None:
    assert status_of(b"\x7fELF....", "tool.exe") == 400
