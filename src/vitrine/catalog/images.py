"""Reading images safely: by content, with a pixel budget, with phone-camera rotation applied."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Collection
from pathlib import Path
from typing import Union

from PIL import Image, ImageOps, UnidentifiedImageError

from vitrine.errors import ImageError

ImageInput = Union[str, Path, bytes, Image.Image]
"""Anything vitrine accepts as an image: a path, the file's bytes, or a PIL image."""

MAX_PIXELS = 64_000_000
"""Above this an image is refused before it is decoded (decompression bombs)."""

FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}

WEB_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
"""What a public service accepts: the formats browsers and phones send, with well-trodden decoders."""


def open_image(source: ImageInput, where: str = "", max_pixels: int = MAX_PIXELS,
               formats: Collection[str] | None = None) -> Image.Image:
    """Decode ``source`` into an RGB image, or raise ``ImageError`` naming ``where``.

    ``formats`` (PIL names such as ``"JPEG"``) limits what is accepted, judged by content.
    """
    if isinstance(source, Image.Image):
        return _rgb(source)
    name = where or (str(source) if isinstance(source, (str, Path)) else "image")
    data = read_image_bytes(source, name) if isinstance(source, (str, Path)) else source
    image = _decode(data, name, max_pixels, formats)
    return _rgb(ImageOps.exif_transpose(image))


def read_image_bytes(path: str | Path, where: str = "") -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(where or str(path), f"image not found: {path}") from None
    except OSError as exc:
        raise ImageError(where or str(path), f"cannot read image {path}: {exc.strerror or exc}") from None


def check_image(data: bytes, where: str, max_pixels: int = MAX_PIXELS,
                formats: Collection[str] | None = None) -> str:
    """Verify that ``data`` decodes fully; return its file extension (from content, not name)."""
    image = _decode(data, where, max_pixels, formats)
    return FORMATS.get(image.format or "", "img")


def content_name(data: bytes, extension: str) -> str:
    """A content-addressed file name: the same bytes are stored once."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest[:2]}/{digest}.{extension}"


def _decode(data: bytes, where: str, max_pixels: int, formats: Collection[str] | None = None) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=sorted(formats) if formats else None)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(where, f"image is {width}x{height} pixels, more than the limit of {max_pixels:,}")
        image.load()
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        if formats:
            raise ImageError(where, f"not a readable image in an accepted format ({', '.join(sorted(formats))})") from None
        raise ImageError(where, f"not a readable image ({type(exc).__name__})") from None
    except Image.DecompressionBombError:  # PIL's own guard fires before ours for really huge headers
        raise ImageError(where, f"image has more pixels than the limit of {max_pixels:,} (a decompression bomb?)") from None
    except Exception as exc:  # noqa: BLE001 - decoders of hostile bytes raise many kinds; all mean "broken"
        raise ImageError(where, f"broken image data ({exc or type(exc).__name__})") from None
    return image


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in {"RGBA", "LA", "P"}:
        # Transparent areas become white, as a product photo's background usually is.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")
