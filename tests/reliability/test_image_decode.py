"""Images decode to the picture a viewer shows, one test per mode Pillow produces from files.

Every image is written to a real file (PNG, JPEG or TIFF, 16-bit PNGs byte by byte where Pillow
cannot write them) and read through the one decoder (``decode_rgb``), the dataset rows that
encode and evaluate read, or ``t2iops data validate``.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2iops.config import load_config
from t2iops.data.dataset import load_rows
from t2iops.data.images import (ALPHA_BACKGROUND, UNSUPPORTED_IMAGE, ImageProblem, ImageRef, decode_rgb,
                                displayed_size)
from t2iops.data.validate import validate
from t2iops.errors import DataError

MAX_PIXELS = 1_000_000


def decode(path: Path) -> np.ndarray:
    image = decode_rgb(ImageRef(path.name, path=path), MAX_PIXELS)
    assert image.mode == "RGB"
    return np.asarray(image)


def saved(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG written chunk by chunk (Pillow writes 16-bit gray only): gray, gray+alpha,
    RGB or RGBA from the channel count of ``pixels`` [H, W] or [H, W, C]."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    h, w, c = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_background_is_black():
    assert ALPHA_BACKGROUND == (0, 0, 0)


# -- 8-bit modes -------------------------------------------------------------------------------
def test_mode_1(tmp_path):
    bits = Image.new("1", (4, 2))
    bits.putpixel((1, 0), 1)
    out = decode(saved(bits, tmp_path / "a.png"))
    assert out[0, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_mode_l(tmp_path):
    grey = np.arange(0, 256, 32, dtype=np.uint8).reshape(1, 8)
    out = decode(saved(Image.fromarray(grey), tmp_path / "a.png"))
    assert np.array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_mode_la_composites_on_black(tmp_path):
    la = Image.new("LA", (3, 1))
    for x, alpha in enumerate((0, 128, 255)):
        la.putpixel((x, 0), (200, alpha))
    assert Image.open(saved(la, tmp_path / "a.png")).mode == "LA"
    out = decode(tmp_path / "a.png")
    assert out[0, :, 0].tolist() == [0, 100, 200]  # 200 * alpha / 255, rounded


def test_mode_l_with_colour_key(tmp_path):
    grey = Image.fromarray(np.array([[10, 200]], dtype=np.uint8))
    saved(grey, tmp_path / "a.png", transparency=200)  # tRNS: grey 200 is transparent
    assert decode(tmp_path / "a.png")[0, :, 0].tolist() == [10, 0]


def test_mode_p_with_transparent_index(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0])  # index 0 red, index 1 green
    palette.putpixel((1, 0), 1)
    saved(palette, tmp_path / "a.png", transparency=1)
    assert Image.open(tmp_path / "a.png").mode == "P"
    out = decode(tmp_path / "a.png")
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [0, 0, 0]  # not the hidden green


def test_mode_p_with_alpha_palette(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (0, 0, 255, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 0))
    palette = rgba.quantize(colors=4, method=Image.Quantize.FASTOCTREE)
    assert palette.mode == "P" and palette.has_transparency_data
    out = decode(saved(palette, tmp_path / "a.png"))
    assert out[0, 0].tolist() == [0, 0, 255] and out[0, 1].tolist() == [0, 0, 0]


def test_mode_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(decode(saved(Image.fromarray(rgb), tmp_path / "a.png")), rgb)


def test_mode_rgba_condition_hides_nothing_under_transparency(tmp_path):
    """A condition whose transparent area holds white: the area decodes black, not white."""
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[0, :, 3] = (0, 128, 255)
    rgba[1, :, 3] = 0
    out = decode(saved(Image.fromarray(rgba), tmp_path / "a.png"))
    assert out[0, :, 0].tolist() == [0, 128, 255]
    assert not out[1].any()


def test_mode_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (4, 1))
    for x, value in enumerate([(0, 0, 0, 0), (0, 0, 0, 255), (255, 0, 0, 0), (0, 255, 255, 0)]):
        cmyk.putpixel((x, 0), value)
    for fmt in ("TIFF", "JPEG"):
        path = saved(cmyk.resize((32, 8), Image.NEAREST), tmp_path / f"a.{fmt.lower()}", format=fmt, quality=100)
        assert Image.open(path).mode == "CMYK"
        out = decode(path)[4, 4::8].astype(int)
        expected = np.array([[255, 255, 255], [0, 0, 0], [0, 255, 255], [255, 0, 0]])
        assert np.abs(out - expected).max() <= (0 if fmt == "TIFF" else 8), (fmt, out)


# -- 16 bit -----------------------------------------------------------------------------------
DEPTH = np.array([[0, 255, 256, 1000, 32896, 65535]], dtype=np.uint16)
HIGH_BYTE = (DEPTH >> 8).astype(np.uint8)  # [0, 0, 1, 3, 128, 255]


def test_16_bit_grey_png_keeps_the_high_byte(tmp_path):
    """The depth map that decoded as 255 everywhere: mid-grey 32896 is 128."""
    path = saved(Image.fromarray(DEPTH), tmp_path / "depth.png")
    assert Image.open(path).mode == "I;16"
    out = decode(path)
    assert np.array_equal(out, np.repeat(HIGH_BYTE[..., None], 3, axis=2))


@pytest.mark.parametrize("mode", ["I;16B", "I;16", "I"])
def test_16_bit_tiff_variants(tmp_path, mode):
    image = Image.fromarray(DEPTH).convert(mode) if mode != "I;16B" else Image.frombytes(
        "I;16B", DEPTH.shape[::-1], DEPTH.astype(">u2").tobytes())
    path = saved(image, tmp_path / "depth.tiff")
    assert Image.open(path).mode == mode
    assert np.array_equal(decode(path)[..., 0], HIGH_BYTE)


@pytest.mark.parametrize("channels", [3, 4, 2])
def test_16_bit_colour_pngs_match_the_grey_rule(tmp_path, channels):
    """16-bit RGB, RGBA and grey+alpha PNGs (Pillow reduces them to 8 bit on open) decode to the
    same values as the same picture saved as 16-bit grey."""
    grey = np.repeat(DEPTH[..., None], 3, axis=2)
    opaque = np.full(DEPTH.shape + (1,), 65535, dtype=np.uint16)
    pixels = {3: grey, 4: np.concatenate([grey, opaque], axis=2),
              2: np.concatenate([DEPTH[..., None], opaque], axis=2)}[channels]
    out = decode(png16(tmp_path / "a.png", pixels))
    assert np.array_equal(out[..., 0], HIGH_BYTE) and np.array_equal(out[..., 2], HIGH_BYTE)


def test_16_bit_rgba_png_composites_on_black(tmp_path):
    pixels = np.zeros((1, 2, 4), dtype=np.uint16)
    pixels[..., 1] = 65535  # green, hidden under alpha 0 in the second pixel
    pixels[0, :, 3] = (65535, 0)
    out = decode(png16(tmp_path / "a.png", pixels))
    assert out[0, 0].tolist() == [0, 255, 0] and out[0, 1].tolist() == [0, 0, 0]


def test_32_bit_outside_16_bit_range_is_refused(tmp_path):
    path = saved(Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode=None), tmp_path / "a.tiff")
    assert Image.open(path).mode == "I"
    with pytest.raises(ImageProblem, match=r"a.tiff: 32-bit integer pixels \(0\.\.\.70000\)") as caught:
        decode(path)
    assert caught.value.kind == UNSUPPORTED_IMAGE


def test_float_is_refused(tmp_path):
    path = saved(Image.fromarray(np.array([[0.0, 0.5]], dtype=np.float32)), tmp_path / "a.tiff")
    assert Image.open(path).mode == "F"
    with pytest.raises(ImageProblem, match=r"a.tiff: 32-bit float pixels \(mode F\)") as caught:
        decode(path)
    assert caught.value.kind == UNSUPPORTED_IMAGE


# -- EXIF orientation -------------------------------------------------------------------------
def displayed_picture() -> np.ndarray:
    """24 wide x 16 high, four 12x8 quadrants of distinct colours: any flip or turn shows."""
    picture = np.zeros((16, 24, 3), dtype=np.uint8)
    picture[:8, :12] = (255, 0, 0)
    picture[:8, 12:] = (0, 255, 0)
    picture[8:, :12] = (0, 0, 255)
    picture[8:, 12:] = (255, 255, 255)
    return picture


# What a camera stores for each EXIF orientation, from the EXIF 2.3 definitions of which visual
# side the stored 0th row and 0th column are (numpy, independent of Pillow's own table).
STORED = {
    1: lambda d: d,
    2: lambda d: d[:, ::-1],  # 0th row top, 0th column right
    3: lambda d: d[::-1, ::-1],  # bottom, right
    4: lambda d: d[::-1],  # bottom, left
    5: lambda d: d.transpose(1, 0, 2),  # 0th row left, 0th column top
    6: lambda d: np.rot90(d, 1),  # right, top
    7: lambda d: np.rot90(d.transpose(1, 0, 2), 2),  # right, bottom
    8: lambda d: np.rot90(d, -1),  # left, bottom
}


def with_orientation(path: Path, orientation: int, fmt: str) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](displayed_picture())))
    stored.save(path, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_decodes_upright(tmp_path, orientation, fmt):
    path = with_orientation(tmp_path / f"photo.{fmt.lower()}", orientation, fmt)
    out = decode(path)
    assert out.shape == (16, 24, 3)
    assert displayed_size(ImageRef(path.name, path=path), MAX_PIXELS) == (24, 16)
    expected = displayed_picture()
    if fmt == "PNG":
        assert np.array_equal(out, expected)
    else:  # JPEG: compare quadrant centres, away from compression ringing at the edges
        for y, x in ((4, 6), (4, 18), (12, 6), (12, 18)):
            assert np.abs(out[y, x].astype(int) - expected[y, x]).max() < 40, (orientation, y, x, out[y, x])


# -- through the stages -----------------------------------------------------------------------
def _dataset(root: Path, image: str, condition: str) -> None:
    (root / "metadata.jsonl").write_text(json.dumps(
        {"id": "r0", "image": image, "conditioning_image": condition, "text": "a picture"}) + "\n")


def test_rotated_photo_with_condition_at_displayed_size_passes_validation(tmp_path):
    """Orientation 6 JPEG stored 16x24, displayed 24x16; the condition is drawn at 24x16. The rows
    that encode and evaluate read give the upright image; the 16-bit RGBA condition decodes
    scaled and composited."""
    root = tmp_path / "ds"
    root.mkdir()
    with_orientation(root / "photo.jpg", 6, "JPEG")
    condition = np.zeros((16, 24, 4), dtype=np.uint16)
    condition[..., :3] = 32896
    condition[:, :12, 3] = 65535  # left half opaque mid-grey, right half transparent
    png16(root / "depth.png", condition)
    _dataset(root, "photo.jpg", "depth.png")
    cfg = load_config(overrides=["data.min_size=8", "data.val_fraction=0", "data.test_fraction=0"])

    report = validate(str(root), str(tmp_path / "validated"), cfg)
    assert report["good"] == 1 and report["bad"] == 0, report["bad_rows"]
    (row,) = load_rows(str(root), cfg)
    assert row.load_image().size == (24, 16)
    cond = np.asarray(row.load_condition())
    assert cond.shape == (16, 24, 3)
    assert (cond[:, :12] == 128).all() and (cond[:, 12:] == 0).all()


def test_resize_policy_resizes_the_condition_to_the_displayed_size(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    with_orientation(root / "photo.jpg", 8, "JPEG")  # stored 16x24, displayed 24x16
    Image.new("L", (48, 32), 255).save(root / "cond.png")
    _dataset(root, "photo.jpg", "cond.png")
    cfg = load_config(overrides=["data.min_size=8", "data.resize_policy=resize", "data.val_fraction=0",
                                 "data.test_fraction=0"])
    (row,) = load_rows(str(root), cfg)
    assert row.load_condition().size == row.load_image().size == (24, 16)


def test_unsupported_mode_is_quarantined_by_name(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    Image.fromarray(np.zeros((16, 16), dtype=np.float32)).save(root / "float.tiff")
    Image.new("RGB", (16, 16)).save(root / "cond.png")
    _dataset(root, "float.tiff", "cond.png")
    cfg = load_config(overrides=["data.min_size=8"])
    with pytest.raises(DataError, match=r"float.tiff: 32-bit float pixels \(mode F\) have no defined 8-bit scale"):
        validate(str(root), str(tmp_path / "validated"), cfg)
    report = json.loads((tmp_path / "validated.failed" / "report.json").read_text())  # beside --out: it failed
    assert report["errors"] == {UNSUPPORTED_IMAGE: 1}
    assert "float.tiff: 32-bit float pixels (mode F)" in report["bad_rows"][0]["message"]
