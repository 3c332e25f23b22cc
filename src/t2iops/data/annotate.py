"""``t2iops data annotate``: build conditioning images from plain images.

A user with only images and captions gets a dataset in our format: ``images/`` (the originals,
byte for byte), ``conditioning_images/`` (one PNG per image from the chosen annotator),
``metadata.jsonl`` and ``annotate.json`` (kind, options, skipped images).

Annotators live in a registry: ``@register_annotator("depth")`` on a class whose instances
map an RGB image to a condition image adds a kind. ``canny`` uses kornia's Canny detector
(thresholds 0.1 / 0.2 by default, the ControlNet++ evaluation protocol).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional

from PIL import Image

from .. import storage
from ..errors import DataError, UsageError
from ..progress import progress
from .images import ImageProblem, ImageRef, decode_rgb

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
SIDECAR_NAMES = ("metadata.jsonl", "metadata.csv")
FILE_COLUMNS = ("file_name", "image", "file", "path")
CAPTION_COLUMNS = ("text", "caption")

ANNOTATORS: dict[str, Callable[..., Callable[[Image.Image], Image.Image]]] = {}


def register_annotator(kind: str):
    """Class decorator: ``kind`` becomes a valid ``--kind``; the class is built with the
    annotator options and called with an RGB image, returning the condition image."""

    def decorate(cls):
        ANNOTATORS[kind] = cls
        return cls

    return decorate


def get_annotator(kind: str, **options: Any) -> Callable[[Image.Image], Image.Image]:
    if kind not in ANNOTATORS:
        raise UsageError(f"unknown annotation kind {kind!r}; known kinds: {', '.join(sorted(ANNOTATORS))}")
    return ANNOTATORS[kind](**options)


@register_annotator("canny")
class CannyAnnotator:
    """White Canny edges on black (kornia; thresholds on gradient magnitude in [0, 1])."""

    def __init__(self, low_threshold: float = 0.1, high_threshold: float = 0.2, kernel_size: int = 5,
                 sigma: float = 1.0):
        if not 0.0 <= low_threshold < high_threshold <= 1.0:
            raise UsageError(f"canny thresholds must satisfy 0 <= low < high <= 1, got low={low_threshold} "
                             f"high={high_threshold}")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise UsageError(f"canny kernel size must be odd and >= 3, got {kernel_size}")
        self.options = {"low_threshold": low_threshold, "high_threshold": high_threshold,
                        "kernel_size": kernel_size, "sigma": sigma}

    def __call__(self, image: Image.Image) -> Image.Image:
        import numpy as np
        import torch
        from kornia.filters import canny

        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        o = self.options
        with torch.no_grad():
            _, edges = canny(pixels.permute(2, 0, 1)[None], o["low_threshold"], o["high_threshold"],
                             kernel_size=o["kernel_size"], sigma=(o["sigma"], o["sigma"]))
        mask = (edges[0, 0] > 0.5).numpy().astype(np.uint8) * 255
        return Image.fromarray(mask, mode="L")


# ---------------------------------------------------------------------------------------
def _read_sidecar(path: Path, file_column: Optional[str], caption_column: str) -> dict[str, str]:
    """``{relative image path: caption}`` from a JSONL or CSV file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        entries = list(csv.DictReader(io.StringIO(text)))
        where = [f"{path.name} row {i + 2}" for i in range(len(entries))]  # row 1 is the header
    else:
        entries, where = [], []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path.name} line {line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(entry, dict):
                raise DataError(f"{path.name} line {line_no}: expected a JSON object")
            entries.append(entry)
            where.append(f"{path.name} line {line_no}")
    if not entries:
        raise DataError(f"caption file {path} has no entries")
    columns = set().union(*(e.keys() for e in entries))
    file_col = file_column or next((c for c in FILE_COLUMNS if c in columns), None)
    caption_col = next((c for c in (caption_column, *CAPTION_COLUMNS) if c in columns), None)
    if file_col not in columns or caption_col is None:
        raise DataError(f"caption file {path} needs an image file column ({file_column or ', '.join(FILE_COLUMNS)}) "
                        f"and a caption column ({caption_column} or {', '.join(CAPTION_COLUMNS)}); "
                        f"it has {', '.join(sorted(columns))}")
    captions = {}
    for entry, at in zip(entries, where):
        name = entry.get(file_col)
        if not name:
            raise DataError(f"{at}: column {file_col!r} is empty")
        captions[str(PurePosixPath(str(name).replace("\\", "/")))] = str(entry.get(caption_col) or "")
    return captions


def _list_images(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root).as_posix())
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def annotate(
    images: str,
    out: str,
    cfg: Any,
    kind: str = "canny",
    captions: Optional[str] = None,
    file_column: Optional[str] = None,
    **options: Any,
) -> dict:
    """Annotate every image under ``images`` with ``kind`` and publish a dataset to ``out``.

    Captions come from ``captions`` (JSONL or CSV) or a ``metadata.jsonl`` / ``metadata.csv``
    beside the images; every image needs a non-empty caption. Images that cannot be decoded are
    skipped and listed; the stage fails when their share exceeds ``data.max_bad_fraction``."""
    annotator = get_annotator(kind, **options)
    data = cfg.data
    image_root = storage.materialize(images, cfg, kind="annotate")
    if not image_root.is_dir():
        raise UsageError(f"--images {images} must be a folder or s3:// prefix of images")
    if captions is None:
        sidecar = next((image_root / n for n in SIDECAR_NAMES if (image_root / n).is_file()), None)
        if sidecar is None:
            raise UsageError(f"no captions for {images}: pass --captions FILE (JSONL or CSV with file_name and "
                             f"text columns) or put {' or '.join(SIDECAR_NAMES)} beside the images")
    else:
        sidecar = storage.materialize(captions, cfg, kind="annotate")
    caption_of = _read_sidecar(sidecar, file_column, data.caption_column)

    files = _list_images(image_root)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {images}")
    uncaptioned = [f for f in files if not caption_of.get(f, "").strip()]
    if uncaptioned:
        raise DataError(f"{len(uncaptioned)} of {len(files)} images have no caption in {sidecar.name} "
                        f"(e.g. {', '.join(uncaptioned[:3])})")
    unmatched = set(caption_of) - set(files)
    if unmatched:
        log.warning("%d caption entries name no image under %s (e.g. %s)", len(unmatched), images,
                    sorted(unmatched)[0])

    id_key = data.id_column or "id"
    skipped: list[dict] = []
    written = 0
    extra = {"stage": "annotate", "kind": kind}
    with storage.publish(out, cfg, extra=extra) as staging:
        (staging / "images").mkdir()
        (staging / "conditioning_images").mkdir()
        with open(staging / "metadata.jsonl", "w") as metadata:
            for rel in progress(files, desc=f"annotate {kind}", unit="image"):
                source = image_root / rel
                try:
                    image = decode_rgb(ImageRef(rel, path=source), data.max_pixels)
                except ImageProblem as exc:
                    skipped.append({"file": rel, "error": exc.kind, "message": str(exc)})
                    continue
                stem = str(PurePosixPath(rel).with_suffix(""))
                image_path = f"images/{rel}"
                condition_path = f"conditioning_images/{stem}.png"
                if (staging / condition_path).exists():
                    raise DataError(f"{rel}: another image has the same name stem {stem!r}; rename one of them")
                (staging / image_path).parent.mkdir(parents=True, exist_ok=True)
                (staging / condition_path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, staging / image_path)
                annotator(image).save(staging / condition_path, format="PNG")
                row = {id_key: stem, data.image_column: image_path, data.conditioning_image_column: condition_path,
                       data.caption_column: caption_of[rel], "condition_kind": kind}
                metadata.write(json.dumps(row) + "\n")
                written += 1
        bad_fraction = len(skipped) / len(files)
        if bad_fraction > data.max_bad_fraction or written == 0:
            # Raising inside the publish block publishes nothing.
            raise DataError(f"{len(skipped)} of {len(files)} images could not be read ({bad_fraction:.1%} > "
                            f"data.max_bad_fraction={data.max_bad_fraction}), e.g. {skipped[0]['message']}")
        summary = {"kind": kind, "options": getattr(annotator, "options", {}), "images": len(files),
                   "written": written, "skipped": skipped}
        (staging / "annotate.json").write_text(json.dumps(summary, indent=2))
        cfg.write(staging)
    log.info("annotated %d images with %s -> %s (%d skipped)", written, kind, out, len(skipped))
    return {"out": str(out), **summary}
