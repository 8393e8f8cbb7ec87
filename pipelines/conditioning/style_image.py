"""A style image as users send it (a file, base64 or a data: URL in a live change), checked before anything
uses it: the bytes must be a PNG, JPEG, WebP, GIF or BMP picture of limited size and sensible dimensions.
PIL only (no torch): the config and the live-change check import this.

Every refusal is a ValueError of one line in the user's terms.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_STYLE_IMAGE_BYTES = 2 * 1024 * 1024  # the encoded file; CLIP looks at 224x224, larger buys nothing
MIN_SIDE = 16
MAX_SIDE = 4096
MAX_PIXELS = 16 * 1024 * 1024
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
# A JSON body carrying the largest style image as base64, with room for the rest of a change.
MAX_STYLE_BODY_BYTES = MAX_STYLE_IMAGE_BYTES * 4 // 3 + 64 * 1024
_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[\w=.+-]+)*;base64,", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class StyleImage:
    """A decoded, checked style picture: RGB pixels (PIL image) and a short label for reports."""

    image: Any = field(repr=False)  # PIL.Image.Image, mode RGB
    digest: str

    @property
    def label(self) -> str:
        """What GET /params reports: the size and the start of the content's sha256, never the pixels."""
        return f"{self.image.width}x{self.image.height} sha256:{self.digest[:12]}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StyleImage) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)


def _size_text(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} kB"


def decode_style_image(data: bytes, what: str = "style_image") -> StyleImage:
    """Encoded image bytes -> StyleImage; ValueError (one line) for anything that is not a usable picture."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_STYLE_IMAGE_BYTES:
        raise ValueError(f"{what} is too large: {_size_text(len(data))} (at most "
                         f"{_size_text(MAX_STYLE_IMAGE_BYTES)}); send a smaller picture, 512 px is plenty")
    if not data:
        raise ValueError(f"{what} is empty; send a PNG, JPEG or WebP picture")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # the header only: dimensions before any decoding
            kind, (width, height) = probe.format, probe.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ValueError(f"{what} is not an image PIL can read; send a PNG, JPEG or WebP picture") from None
    if kind not in FORMATS:
        raise ValueError(f"{what} is a {kind} image; send PNG, JPEG, WebP, GIF or BMP")
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise ValueError(f"{what} is {width}x{height} pixels; each side must be {MIN_SIDE} to {MAX_SIDE} "
                         f"and the picture at most {MAX_PIXELS // 2**20} megapixels")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise ValueError(f"{what} is a damaged {kind} file; send it again or another picture") from None
    return StyleImage(rgb, hashlib.sha256(data).hexdigest())


def read_style_file(path: str | Path, what: str = "--style-image") -> StyleImage:
    """A style picture from a file (the CLI, a config, the terminal)."""
    path = Path(path).expanduser()
    try:
        size = path.stat().st_size
        if size > MAX_STYLE_IMAGE_BYTES:
            raise ValueError(f"{what} {path} is too large: {_size_text(size)} (at most "
                             f"{_size_text(MAX_STYLE_IMAGE_BYTES)}); use a smaller picture, 512 px is plenty")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a folder, not an image file") from None
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    return decode_style_image(data, f"{what} {path}")


def parse_style_value(value: Any) -> StyleImage | None:
    """A live change's ``style_image``: a StyleImage, raw bytes, or text holding base64 or a
    ``data:image/...;base64,`` URL; "" or "none" clears the style. Never a path: a live change comes from
    the network, and files are the CLI's and the terminal's to read."""
    if value is None or isinstance(value, StyleImage):
        return value
    if isinstance(value, bytes | bytearray):
        return decode_style_image(bytes(value))
    if not isinstance(value, str):
        raise ValueError(f"style_image must be a picture as base64 text or a data: URL, got "
                         f"{type(value).__name__}")
    text = value.strip()
    if text.lower() in ("", "none", "off"):
        return None
    if len(text) > MAX_STYLE_IMAGE_BYTES * 4 // 3 + 200:
        raise ValueError(f"style_image is too large: {_size_text(len(text) * 3 // 4)} (at most "
                         f"{_size_text(MAX_STYLE_IMAGE_BYTES)}); send a smaller picture, 512 px is plenty")
    match = _DATA_URL.match(text)
    if match is not None:
        kind = (match.group("type") or "").lower()
        if kind and not kind.startswith("image/"):
            raise ValueError(f"style_image is a data: URL of {kind}, not an image")
        text = text[match.end():]
    elif text.startswith("data:"):
        raise ValueError("style_image: a data: URL must be base64 (data:image/png;base64,...)")
    try:
        data = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("style_image is neither base64 nor a data: URL of a picture; send "
                         "data:image/png;base64,... (the terminal and --style-image take a file)") from None
    return decode_style_image(data)
