"""Opening dataset images safely and decoding them faithfully: the one decoder every stage uses.

A PNG or JPEG header can claim 30000x30000 pixels in a few hundred bytes; decoding it would
allocate gigabytes. :func:`open_checked` reads only the header (PIL opens lazily) and refuses
anything above ``data.max_pixels`` before :func:`decode_rgb` ever calls ``load()``.

:func:`decode_rgb` then returns the picture a viewer shows, as 8-bit RGB (validation, encode,
evaluate and annotate all read images through it):

* **EXIF orientation** (tags 2-8) is applied (``ImageOps.exif_transpose``): a phone photo stored
  sideways decodes upright, at the size a viewer displays, so it matches a condition drawn on
  the displayed picture. :func:`displayed_size` gives that size from the header alone.
* **16-bit** images (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, and ``I`` holding 0..65535, as a
  16-bit grayscale PNG or TIFF opens) keep the high byte, ``value >> 8``: the rule Pillow itself
  applies when it opens a 16-bit RGB / RGBA / gray+alpha PNG, so a depth map saved as 16-bit
  gray and as 16-bit RGB decode to the same values. ``convert("RGB")`` alone would clip every
  value above 255 to white. ``I`` with values outside 0..65535 and 32-bit float ``F`` have no
  defined 8-bit scale and are refused (``unsupported_image``).
* **Transparency** (an alpha channel, a palette with alpha, a ``tRNS`` colour key) is composited
  over :data:`ALPHA_BACKGROUND`, black, for images and conditions alike: black is "nothing" in
  every condition kind we train on (edge and line maps, circle outlines, far depth), so a
  transparent area reads as no signal instead of the colour stored under it.
* Other modes (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``) go through
  Pillow's conversion. Embedded ICC profiles are not applied: pixel values are taken as sRGB.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

# Error classes an image can fail with (the validation report counts rows per class).
MISSING_FILE = "missing_file"
CORRUPT_IMAGE = "corrupt_image"
DECOMPRESSION_BOMB = "decompression_bomb"
UNSUPPORTED_IMAGE = "unsupported_image"

ALPHA_BACKGROUND = (0, 0, 0)  # what transparent pixels show: see the module docstring
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
EXIF_ORIENTATION = 0x0112


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


def displayed_size(ref: ImageRef, max_pixels: int) -> tuple[int, int]:
    """(width, height) as :func:`decode_rgb` returns the image, read from the header only:
    EXIF orientations 5-8 swap the stored width and height."""
    with open_checked(ref, max_pixels) as image:
        width, height = image.size
        return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


def _orientation(image: Image.Image) -> int:
    # A PNG's eXIf chunk is in ``info`` when it precedes the pixel data (where writers put it);
    # PngImageFile.getexif() would otherwise decode the whole image to look further.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)


def decode_rgb(ref: ImageRef, max_pixels: int) -> Image.Image:
    """Fully decode to upright 8-bit RGB (see the module docstring for each mode); truncated
    or corrupt data raises ``corrupt_image``, a mode without a defined RGB form
    ``unsupported_image``."""
    image = open_checked(ref, max_pixels)
    try:
        with image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return to_rgb(image, ref.name)
    except ImageProblem:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageProblem(CORRUPT_IMAGE, f"{ref.name}: cannot decode ({exc})", ref.name) from None


def to_rgb(image: Image.Image, name: str) -> Image.Image:
    """A decoded image of any mode as 8-bit RGB: 16-bit scaled, transparency composited."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        image = _high_byte(image, name)
    elif image.mode == "F":
        raise ImageProblem(UNSUPPORTED_IMAGE, f"{name}: 32-bit float pixels (mode F) have no defined 8-bit "
                           "scale; save the image as 8- or 16-bit PNG", name)
    try:
        if image.has_transparency_data:
            background = Image.new("RGBA", image.size, (*ALPHA_BACKGROUND, 255))
            return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:  # Pillow: "conversion from X to Y not supported"
        raise ImageProblem(UNSUPPORTED_IMAGE, f"{name}: image mode {image.mode} cannot be converted to RGB "
                           f"({exc})", name) from None


def _high_byte(image: Image.Image, name: str) -> Image.Image:
    pixels = np.asarray(image)
    if image.mode == "I" and pixels.size and (int(pixels.min()) < 0 or int(pixels.max()) > 65535):
        raise ImageProblem(UNSUPPORTED_IMAGE, f"{name}: 32-bit integer pixels ({int(pixels.min())}..."
                           f"{int(pixels.max())}) outside the 16-bit range have no defined 8-bit scale; save "
                           "the image as 8- or 16-bit PNG", name)
    return Image.fromarray((pixels.astype(np.uint32) >> 8).astype(np.uint8))  # 2-D uint8: mode L
