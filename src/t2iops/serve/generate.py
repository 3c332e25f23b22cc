"""``t2iops generate``: prompts and condition images -> images, with the evaluation's sampler.

Inputs are one of: condition files (``--condition``, repeatable), a folder of condition images
(``--conditions``, every image file in name order), or the rows of a validated dataset split
(``--validated``: each row's caption and condition, ordered by id, as the evaluation reads them).
Prompts pair with conditions in order; one prompt goes with every condition, one condition with
every prompt. Each condition is used at its own size (it is the generated image's size) unless
``--size`` cover-crops them all to one size as the evaluation does.

Everything is checked before the first image: every file decodes, every request passes
:meth:`~t2iops.serve.engine.Engine.check` (sizes, prompt lengths, ranges). Image ``i`` uses seed
``seed + i`` (the evaluation's rule). The output (a folder or s3:// prefix) is published
atomically: ``NNNN-<name>.png`` per image and ``generation.json``: the base model reference, the
adapter (version, weights sha256, runtime, where it came from), the settings and, per image, its
prompt, condition, seed and size; ``config.resolved.yaml``.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from .. import __version__, storage
from ..errors import UsageError
from ..progress import progress
from .engine import Engine, GenerateRequest, load_base, load_adapter

log = logging.getLogger(__name__)

GENERATION_FILE = "generation.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_CONDITION_PIXELS = 64_000_000  # what a condition file may claim before it is decoded (data.max_pixels' default)


@dataclass
class Item:
    """One image to generate: its prompt and its condition (decoded, RGB) and where that came from."""

    prompt: str
    condition: Any
    condition_name: str
    row_id: Optional[str] = None


@dataclass(frozen=True)
class Options:
    """What the command line asks beyond the configuration: request values (None: the engine's
    defaults, from the ``evaluate`` settings) and the inputs."""

    runtime: str = "torch"
    scale: Optional[float] = None
    steps: Optional[int] = None
    guidance: Optional[float] = None
    seed: Optional[int] = None
    negative_prompt: Optional[str] = None
    scheduler: Optional[str] = None
    size: Optional[tuple[int, int]] = None  # (height, width)
    registry: Optional[str] = None
    model_name: Optional[str] = None


# ---------------------------------------------------------------------------------------
# Inputs
def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` or a single side ``S`` -> (height, width)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text or "")
    if not match:
        raise UsageError(f"--size {text!r}: give HEIGHTxWIDTH in pixels (e.g. 512x768) or one side (512)")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if height <= 0 or width <= 0:
        raise UsageError(f"--size {text!r}: both sides must be positive")
    return height, width


def read_condition(path: Path) -> Any:
    """A condition file decoded to RGB by the dataset's decoder (header checked first)."""
    from ..data.images import ImageProblem, ImageRef, decode_rgb

    try:
        return decode_rgb(ImageRef(str(path), path=path), MAX_CONDITION_PIXELS)
    except ImageProblem as exc:
        raise UsageError(f"condition {exc}") from None


def condition_files(folder: str) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--conditions {folder}: no such folder")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"--conditions {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it")
    return files


def pair(prompts: list[str], conditions: list[tuple[str, Any]]) -> list[Item]:
    """Prompts with conditions, in order: as many of each, or one of either for all of the other."""
    if not prompts:
        raise UsageError("no --prompt: give one prompt for every condition, or one per condition in order")
    if len(prompts) == len(conditions):
        pairs = list(zip(prompts, conditions))
    elif len(prompts) == 1:
        pairs = [(prompts[0], c) for c in conditions]
    elif len(conditions) == 1:
        pairs = [(p, conditions[0]) for p in prompts]
    else:
        raise UsageError(f"--prompt given {len(prompts)} times for {len(conditions)} conditions: give one prompt "
                         "for all of them, or one per condition (in order)")
    return [Item(prompt, image, name) for prompt, (name, image) in pairs]


def dataset_items(data: str, validated: str, split: str, limit: Optional[int], cfg: Any,
                  prompts: list[str]) -> list[Item]:
    """The validated rows of ``split`` ordered by id (the first ``limit``): caption and condition
    (``--prompt`` given once replaces every caption)."""
    from ..data.dataset import check_split_not_empty, load_rows, load_validated_ids
    from ..errors import DataError

    if len(prompts) > 1:
        raise UsageError("with --validated each row's caption is its prompt: give --prompt at most once (it then "
                         "replaces every caption)")
    ids = load_validated_ids(validated, cfg)
    check_split_not_empty(ids, split, cfg, validated, f"generate --split {split}")
    rows = sorted(load_rows(data, cfg, split=split, ids=ids), key=lambda r: r.id)
    if not rows:
        raise DataError(f"{data}: no validated rows in split {split!r}")
    rows = rows[:limit] if limit else rows
    return [Item(prompts[0] if prompts else row.text, row.load_condition(), row.condition_ref.name, row.id)
            for row in rows]


def gather(cfg: Any, prompts: list[str], conditions: list[str], folder: Optional[str], validated: Optional[str],
           data: Optional[str], split: Optional[str], limit: Optional[int]) -> list[Item]:
    """The items the command line names (exactly one kind of input)."""
    given = [name for name, value in (("--condition", conditions), ("--conditions", folder),
                                      ("--validated", validated)) if value]
    if len(given) != 1:
        raise UsageError("give the conditions one way: --condition FILE (repeatable), --conditions FOLDER or "
                         f"--validated DIR (a validated dataset split){'; got ' + ' and '.join(given) if given else ''}")
    if validated:
        return dataset_items(data or cfg.data.root, validated, split or cfg.evaluate.split, limit, cfg, prompts)
    files = [Path(c) for c in conditions] if conditions else condition_files(folder)
    for path in files:
        if not path.is_file():
            raise UsageError(f"--condition {path}: no such file")
    items = pair(prompts, [(str(p), read_condition(p)) for p in files])
    return items[:limit] if limit else items


# ---------------------------------------------------------------------------------------
# Generating
def generate_images(adapter_ref: str, items: list[Item], out: str, cfg: Any, options: Options = Options()) -> dict:
    """Generate ``items`` with the adapter ``adapter_ref`` names and publish them to ``out``;
    returns the ``generation.json`` record."""
    from ..evaluate.sampling import cover_crop

    if not items:
        raise UsageError("nothing to generate: no conditions")
    if options.size:
        items = [replace(item, condition=cover_crop(item.condition, options.size)) for item in items]
    adapter = load_adapter(adapter_ref, cfg, options.runtime, registry=options.registry, model_name=options.model_name)
    base = load_base(cfg, adapter.base_reference(cfg.model))
    settings = replace(base.settings, scheduler=options.scheduler) if options.scheduler else base.settings
    engine = Engine(base, adapter, settings=settings)
    first_seed = options.seed if options.seed is not None else settings.seed
    requests = [GenerateRequest(prompt=item.prompt, condition=item.condition, scale=options.scale,
                                steps=options.steps, guidance=options.guidance, seed=first_seed + i,
                                negative_prompt=options.negative_prompt) for i, item in enumerate(items)]
    for i, (item, request) in enumerate(zip(items, requests)):
        try:
            engine.check(request)
        except UsageError as exc:
            raise UsageError(f"image {i} (condition {item.condition_name}): {exc}") from None
    started = time.time()
    records = []
    with storage.publish(out, cfg, extra={"stage": "generate"}) as staging:
        for i, (item, request) in enumerate(progress(list(zip(items, requests)), desc="generate", unit="image")):
            image = engine.generate(request)
            name = f"{i:04d}-{_stem(item)}.png"
            image.save(staging / name)
            used = engine.resolve(request)
            records.append({"file": name, "prompt": item.prompt, "condition": item.condition_name,
                            **({"row_id": item.row_id} if item.row_id else {}), "seed": used["seed"],
                            "width": used["width"], "height": used["height"]})
        record = {
            "t2iops_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **base.describe(),
            "adapter": adapter.describe(),
            "runtime": adapter.runtime,
            "settings": {key: used[key] for key in ("scheduler", "steps", "guidance", "scale", "conditioning_factor",
                                                    "negative_prompt")}
            | {"seed": first_seed, "seeds": "image i uses seed + i", "size": list(options.size) if options.size
               else "each condition's own"},
            "seconds": round(time.time() - started, 2),
            "images": records,
        }
        (staging / GENERATION_FILE).write_text(json.dumps(record, indent=2) + "\n")
        cfg.write(staging)
    adapter.close()
    log.info("generate: %d images -> %s", len(records), out)
    return record


def _stem(item: Item) -> str:
    raw = item.row_id or Path(item.condition_name).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)[:60] or "image"
