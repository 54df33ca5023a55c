"""Image verification and normalisation with Pillow (runs in the parse child).

Only the allowlisted decoders are reachable (no FITS/EPS/McIdas); the pixel count
is checked from the header before any pixel is decoded; a decompression-bomb
warning is an error. A large JPEG (a 61 or 200 MP photo) is decoded already
reduced (Pillow's draft: the DCT scaled 1/2 to 1/8), so its cap is higher than that
of the formats decoded whole. The result is re-encoded, so what reaches a provider
is an image we produced, not the client's bytes.
"""

from __future__ import annotations

import base64
import io
import warnings

from PIL import Image, ImageOps

from media.errors import MediaError, too_large, unprocessable

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")


def normalise(data: bytes, max_pixels: int, max_side: int, max_jpeg_pixels: int = 0) -> tuple[str, int, int]:
    """Return (data URL, width, height) of the verified, downscaled, re-encoded image.

    ``max_pixels`` caps images decoded whole, ``max_jpeg_pixels`` JPEGs (decoded reduced)."""
    jpeg_cap = max(max_pixels, max_jpeg_pixels)
    Image.MAX_IMAGE_PIXELS = jpeg_cap  # Pillow's own bomb check at open(), with our highest cap
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as opened:
                image: Image.Image = opened
                width, height = image.size
                source_format = image.format
                cap = jpeg_cap if source_format == "JPEG" else max_pixels
                if width <= 0 or height <= 0 or width * height > cap:
                    raise too_large(f"Image has too many pixels ({width}x{height}; limit {cap}).")
                if source_format == "JPEG" and max(width, height) > max_side:
                    image.draft(None, (max_side, max_side))  # decode at the smallest scale still >= max_side
                image.seek(0)  # animated GIF/WEBP/TIFF: the first frame only
                image.load()
                if max(image.size) > max_side:  # before the EXIF turn, which copies the image
                    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                image = ImageOps.exif_transpose(image)
                has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
                out = io.BytesIO()
                if has_alpha or source_format in ("PNG", "GIF"):  # keep graphics lossless; photos as JPEG
                    image = image.convert("RGBA" if has_alpha else "RGB")
                    image.save(out, format="PNG", optimize=False)
                    mime = "image/png"
                else:
                    image = image.convert("RGB")
                    image.save(out, format="JPEG", quality=88)
                    mime = "image/jpeg"
                w, h = image.size
        except MediaError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise too_large(f"Image has too many pixels (limit {max_pixels}).") from None
        except MemoryError:
            raise too_large("Image needs too much memory to decode.") from None
        except Exception:  # Pillow raises many types for bad input; all mean "not a usable image"
            raise unprocessable("The image could not be decoded (allowed: PNG, JPEG, GIF, WEBP, BMP, TIFF).") from None
    return f"data:{mime};base64," + base64.b64encode(out.getvalue()).decode("ascii"), w, h
