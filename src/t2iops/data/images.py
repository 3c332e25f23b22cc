"""Opening dataset images safely: the header is checked before a single pixel is decoded.

A PNG or JPEG header can claim 30000x30000 pixels in a few hundred bytes; decoding it would
allocate gigabytes. :func:`open_checked` reads only the header (PIL opens lazily) and refuses
anything above ``data.max_pixels`` before :func:`decode_rgb` ever calls ``load()``.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from PIL import Image, UnidentifiedImageError

from ..errors import DataError

# Error classes an image can fail with (the validation report counts rows per class).
MISSING_FILE = "missing_file"
CORRUPT_IMAGE = "corrupt_image"
DECOMPRESSION_BOMB = "decompression_bomb"


class ImageProblem(DataError):
    """An image that cannot be used; ``kind`` is one of the error classes above."""

    def __init__(self, kind: str, message: str, file: Optional[str] = None):
        super().__init__(message)
        self.kind = kind
        self.file = file


@dataclass(frozen=True)
class ImageRef:
    """Where one image's encoded bytes live: a local file, or bytes held by an Arrow table
    (``datasets`` Image features, parquet shards) fetched only when the image is opened."""

    name: str  # what reports show: a path relative to the dataset root, or "<shard>[row].column"
    path: Optional[Path] = None
    fetch: Optional[Callable[[], bytes]] = None

    def source(self) -> Path | BinaryIO:
        """What ``Image.open`` reads: the file path (PIL then owns and closes the handle) or
        the fetched bytes."""
        if self.fetch is not None:
            data = self.fetch()
            if data is None:
                raise ImageProblem(MISSING_FILE, f"{self.name}: no image bytes in the table", self.name)
            return io.BytesIO(data)
        if self.path is None or not self.path.is_file():
            raise ImageProblem(MISSING_FILE, f"{self.name}: file not found", self.name)
        return self.path

    def read_bytes(self) -> bytes:
        src = self.source()
        return src.read_bytes() if isinstance(src, Path) else src.getvalue()  # type: ignore[union-attr]


def _allow_up_to(max_pixels: int) -> None:
    # PIL has its own global bomb limit (~89 Mpx, raising at twice that) that fires inside
    # Image.open. Raise it to our explicit limit when ours is larger, so that data.max_pixels
    # alone decides; ours is enforced below from the header.
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def open_checked(ref: ImageRef, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse images claiming more than ``max_pixels``."""
    _allow_up_to(max_pixels)
    src = ref.source()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(src)
    except Image.DecompressionBombError as exc:
        raise ImageProblem(DECOMPRESSION_BOMB, f"{ref.name}: refused without decoding, the header claims too many "
                           f"pixels (data.max_pixels={max_pixels}; {exc})", ref.name) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(CORRUPT_IMAGE, f"{ref.name}: not a readable image ({exc})", ref.name) from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageProblem(
            DECOMPRESSION_BOMB,
            f"{ref.name}: header claims {width}x{height} = {width * height} pixels, "
            f"more than data.max_pixels={max_pixels}; refused without decoding",
            ref.name,
        )
    return image


def decode_rgb(ref: ImageRef, max_pixels: int) -> Image.Image:
    """Fully decode and convert to RGB; truncated or corrupt data raises ``corrupt_image``."""
    image = open_checked(ref, max_pixels)
    try:
        with image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageProblem(CORRUPT_IMAGE, f"{ref.name}: cannot decode ({exc})", ref.name) from None
