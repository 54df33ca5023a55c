"""Real attachment files built by the libraries themselves, plus hostile ones, for the media tests."""

from __future__ import annotations

import io
import math
import struct
import wave
import zipfile
import zlib


def docx_bytes(text: str = "Quarterly revenue grew by 42 percent.") -> bytes:
    import docx

    document = docx.Document()
    document.add_paragraph(text)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "Region"
    table.cell(0, 1).text = "Sales"
    table.cell(1, 0).text = "Nordics"
    table.cell(1, 1).text = "1234"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def xlsx_bytes(rows: int = 5, sheet: str = "Sales") -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    ws = workbook.active
    ws.title = sheet
    ws.append(["Region", "Units"])
    for index in range(rows):
        ws.append([f"region-{index}", index * 10])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def pptx_bytes(title: str = "Launch plan", notes: str = "Remember the zebra budget.") -> bytes:
    import pptx

    presentation = pptx.Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[1])
    slide.shapes.title.text = title
    slide.placeholders[1].text = "Ship in March"
    slide.notes_slide.notes_text_frame.text = notes
    out = io.BytesIO()
    presentation.save(out)
    return out.getvalue()


def pdf_bytes(pages: int = 3, prefix: str = "Page text") -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for number in range(1, pages + 1):
        pdf.add_page()
        pdf.cell(0, 10, f"{prefix} number {number}")
    return bytes(pdf.output())


def png_bytes(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def pixel_bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose IHDR claims width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def zip_bomb_docx(expanded: int = 64 * 1024 * 1024) -> bytes:
    """A real DOCX with one extra entry that inflates far past the caps (42.zip-style ratio)."""
    base = docx_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        with dst.open("word/media/bomb.bin", "w", force_zip64=True) as handle:
            block = b"\x00" * (1 << 20)
            for _ in range(expanded // len(block)):
                handle.write(block)
    return out.getvalue()


def many_entries_xlsx(entries: int = 10_000) -> bytes:
    base = xlsx_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        for index in range(entries):
            dst.writestr(f"xl/extra/{index}.bin", b"")
    return out.getvalue()


def slip_pptx() -> bytes:
    base = pptx_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("../../evil.sh", b"echo pwned")
    return out.getvalue()


LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">' for i in range(1, 10))
    + ']>\n<lolz>&lol9;</lolz>'
)


def billion_laughs_xlsx() -> bytes:
    """A real XLSX whose workbook part carries a billion-laughs DTD."""
    base = xlsx_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "xl/sharedStrings.xml" or info.filename == "xl/workbook.xml":
                text = data.decode()
                head, _, rest = text.partition("?>")
                data = (head + '?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
                        + rest).encode()
            dst.writestr(info, data)
    return out.getvalue()


def xxe_docx(url: str) -> bytes:
    """A DOCX whose document part declares an external entity pointing at ``url``."""
    base = docx_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "word/document.xml":
                text = data.decode()
                head, _, rest = text.partition("?>")
                data = (head + f'?><!DOCTYPE d [<!ENTITY xxe SYSTEM "{url}">]>' + rest.replace("Quarterly", "&xxe;")).encode()
            dst.writestr(info, data)
    return out.getvalue()


def _pdf(objects: list[bytes], trailer_extra: bytes = b"", xref_prev_self: bool = False) -> bytes:
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    prev = b" /Prev %d" % xref if xref_prev_self else b""
    out.write(b"trailer\n<< /Size %d /Root 1 0 R%s%s >>\nstartxref\n%d\n%%%%EOF\n"
              % (len(objects) + 1, prev, trailer_extra, xref))
    return out.getvalue()


def pdf_flate_bomb(expanded: int = 64 * 1024 * 1024) -> bytes:
    """One page whose content stream inflates to ``expanded`` bytes."""
    compressor = zlib.compressobj(9)
    block = b" " * (1 << 20)
    stream = b"".join(compressor.compress(block) for _ in range(expanded // len(block))) + compressor.flush()
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ])


def pdf_circular_xref() -> bytes:
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    ], xref_prev_self=True)


# ---------------------------------------------------------------- ordinary files some parsers refuse


def owner_password_pdf(text: str = "Owner locked text") -> bytes:
    """Encrypted with an owner password only (printing/copying rights): every viewer opens it."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.cell(0, 10, text)
    pdf.set_encryption(owner_password="owner-secret")
    return bytes(pdf.output())


def doctype_plist(value: str = "Zebra") -> bytes:
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" '
            b'"http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n<plist version="1.0"><dict><key>Name</key>'
            b"<string>" + value.encode() + b"</string></dict></plist>\n")


def doctype_xhtml(text: str = "Hello page") -> bytes:
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
            b'"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n<html xmlns="http://www.w3.org/1999/xhtml">'
            b"<head><title>t</title></head><body><p>" + text.encode() + b"</p></body></html>\n")


def long_cell_csv(cell_chars: int = 150_000) -> bytes:
    return b"id,notes\n1," + b"y" * cell_chars + b"\n2,short note\n"


def gray_jpeg(width: int, height: int) -> bytes:
    """A large photo-sized JPEG (grayscale and flat, so it is quick to make and small to send)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (width, height), 128).save(out, format="JPEG", quality=80)
    return out.getvalue()


def wav_bytes(seconds: float = 1.0, rate: int = 16000, frequency: float = 440.0) -> bytes:
    """A real mono 16-bit PCM WAV: a sine tone (what a speech-to-text test uploads)."""
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * frequency * i / rate)))
                      for i in range(int(seconds * rate)))
    out = io.BytesIO()
    with wave.open(out, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(frames)
    return out.getvalue()


def encoded_audio(container: str, codec: str, seconds: float, rate: int = 48_000) -> bytes:
    """A tone encoded by PyAV (ffmpeg in its wheels): an m4a with AAC, a webm with Opus, as phones and
    browsers record them."""
    import av
    import numpy as np

    out = io.BytesIO()
    with av.open(out, mode="w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=rate)
        stream.layout = "mono"  # type: ignore[union-attr]
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
        step = 960
        for start in range(0, len(samples), step):
            block = samples[start:start + step]
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="flt", layout="mono")
            frame.rate = rate
            frame.pts = start
            for packet in stream.encode(frame):  # type: ignore[union-attr]
                muxer.mux(packet)
        for packet in stream.encode(None):  # type: ignore[union-attr]
            muxer.mux(packet)
    return out.getvalue()
