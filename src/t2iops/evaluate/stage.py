"""``t2iops evaluate``: sample, measure, merge, report, gate.

One code path for every way of running: :func:`evaluate_shard` evaluates a slice of the
evaluation set and publishes partial results (per-sample rows, mergeable FID statistics, KID
features, images); :func:`merge_shards` combines any complete set of shards into the final
metrics, report and gate. A single-process run (:func:`evaluate`) is one shard plus a merge.

Each sample is generated at its aspect-ratio bucket's size (``encode.buckets`` at the
evaluation resolution, the bucket nearest its condition's aspect), its condition and real image
resized to cover that size and centre-cropped, so wide and tall layouts are judged whole. The
samples are sorted by bucket and a batch holds one bucket (see :class:`EvaluationPlan`).

Shards split the evaluation set into whole sampling batches, and every image's generator is
seeded ``evaluate.seed + sample index``, so a sharded run produces the single-process images.

Shard layout: ``shard.json`` (slice, settings fingerprint), ``samples.jsonl``,
``stats/<variant>.npz`` (float64 sum, sum of outer products, count, float32 features; also
``real``), ``images/<variant>/<file>``, ``conditions/<file>``, ``real_images/<file>`` (``<file>``
from :func:`sample_file_name`, recorded in each sample), ``training_loss.json`` (the adapter's
training loss, see :mod:`.training_curve`), ``config.resolved.yaml``.
"""
from __future__ import annotations

import json
import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from .. import storage
from ..errors import DataError, GateFailed, ModelError, UsageError
from ..hashing import bytes_digest, digest, file_digest, hasher
from ..progress import progress
from .fid import EXTRACTOR_SETTINGS, FeatureStats
from .plan import (EvaluationPlan, eval_resolution, evaluation_plan, evaluation_rows, sample_file_name,
                   shard_batches)
from .training_curve import TRAINING_CURVE, read_training_curve

log = logging.getLogger(__name__)

WITHOUT = "without_adapter"
SHARD_INFO = "shard.json"
SAMPLES = "samples.jsonl"
REAL = "real_images"  # the dataset's own images, scored like the generated ones: the ceiling


def adapter_variant(scale: float) -> str:
    return f"adapter@{scale:g}"


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def _adapter_digest(adapter: Any) -> str:
    """The adapter's weights, by name, as fp32 bytes: a fingerprint of what is evaluated."""
    h = hasher()
    for name, tensor in sorted(adapter.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ShardSlice:
    """Shard ``index`` of ``count``: the samples ``[lo, hi)`` of the ``total`` evaluation rows."""

    index: int
    count: int
    lo: int
    hi: int
    total: int


@dataclass(frozen=True)
class ShardRun:
    """A shard's settings and loaded models, set up once: every batch is generated and scored
    with them, and shard.json records them so the merge can check that the shards agree. The
    scorers: ``clip`` is None without ``evaluate.clip_model``; ``inception`` is None when FID/KID
    are off or unavailable, and ``fid_missing`` says why."""

    ev: Any  # the evaluate.* settings
    adapter: str  # as given: a training output or an adapter folder
    adapter_digest: str
    ref: Any  # the base model's BaseModelRef, as the training run recorded it
    family: str
    resolution: int
    buckets: list  # the sizes the samples are generated at, (height, width), square first
    device: str
    variants: list
    generators: Any
    fidelity: list  # the condition-fidelity metrics of evaluate.condition_kind
    clip: Any
    inception: Any
    fid_missing: Optional[str]


# ---------------------------------------------------------------------------------------
# FID pieces
def load_inception(cfg: Any, device: str):
    """(extractor or None, why FID is missing or None). Fails unless evaluate.fid allows it."""
    from .fid import InceptionFeatures, resolve_inception_weights

    mode = cfg.evaluate.fid
    if mode == "off":
        return None, "FID/KID turned off (evaluate.fid=off)"
    try:
        return InceptionFeatures(resolve_inception_weights(cfg.evaluate.inception_weights, cfg), device), None
    except ModelError as exc:
        if mode == "required":
            raise ModelError(
                f"{exc} (evaluate.fid=required; evaluate.fid=optional writes the report without FID/KID)"
            ) from None
        why = f"{exc} (evaluate.fid=optional, so the report is written without FID/KID)"
        log.warning("FID/KID skipped: %s", why)
        return None, why


def real_statistics(plan: EvaluationPlan, batches: list, inception: Any, cfg: Any) -> FeatureStats:
    """Inception statistics of the real images of ``batches`` (sample ranges of ``plan``),
    accumulated batch by batch exactly as the generated images' are, each at its bucket's size.
    Each batch's features are cached by content: the rows' ids and image pixels, the split, the
    size and the Inception weights, so a new dataset version misses the cache and shards reuse
    what a single run computed."""
    weights = file_digest(inception.weights_path)
    stats = FeatureStats()
    for lo, hi in progress(batches, desc="inception (real images)", unit="batch"):
        batch, (height, width) = plan.rows[lo:hi], plan.sizes[lo]
        images = np.stack([np.asarray(_load_real(r, (height, width))) for r in batch])
        key = digest({
            "ids": [r.id for r in batch],
            "pixels": [bytes_digest(im.tobytes()) for im in images],
            "split": cfg.evaluate.split,
            "resolution": height if height == width else [height, width],
            "weights": weights,
        })
        path = storage.cache_root(cfg) / "fid_real" / f"{key}.npy"
        if path.exists():
            features = np.load(path)
        else:
            features = inception(_to_tensor(images))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{key}.{uuid.uuid4().hex[:8]}.npy")
            np.save(tmp, features)
            tmp.replace(path)
        stats.update(features)
    return stats


def _load_real(row: Any, size: tuple[int, int]) -> Image.Image:
    from .sampling import cover_crop

    return cover_crop(row.load_image(), size, Image.BICUBIC)


# ---------------------------------------------------------------------------------------
def evaluate_shard(adapter: str, data: str, validated: str, out: str, cfg: Any, shard: tuple[int, int] = (0, 1)) -> dict:
    """Evaluate shard ``i`` of ``n`` and publish its partial results to ``out``."""
    from .condition_fidelity import load_estimator_spec, metrics_for

    ev = cfg.evaluate
    index, count = shard
    load_estimator_spec(ev.condition_kind, ev.estimator)
    fidelity = metrics_for(ev.condition_kind)
    rows = evaluation_rows(data, validated, cfg)
    run = _load_run(adapter, fidelity, cfg)
    plan = evaluation_plan(rows, run.buckets, ev.batch_size)
    batches = shard_batches(plan.batches, ev.batch_size, index, count)
    lo, hi = (batches[0][0], batches[-1][1]) if batches else (0, 0)
    part = ShardSlice(index, count, lo, hi, total=len(rows))
    fingerprint = digest({
        "evaluate": {k: v for k, v in ev.model_dump(mode="json").items() if k != "gate"},
        "model": cfg.model.model_dump(mode="json"),
        "base_model": run.ref.to_dict(),
        "resolution": run.resolution,
        "adapter": run.adapter_digest,
        "rows": [r.id for r in plan.rows],
        "fid": run.fid_missing is None,
        **({"buckets": run.buckets} if len(run.buckets) > 1 else {}),
    })
    inception = run.inception
    stats = {v: FeatureStats() for v in run.variants}
    samples: list[dict] = []
    with storage.publish(out, cfg, extra={"stage": "evaluate-shard", "shard": f"{index}/{count}"}) as staging:
        for v in run.variants:
            (staging / "images" / v).mkdir(parents=True)
        (staging / "conditions").mkdir()
        (staging / REAL).mkdir()
        for b_lo, b_hi in progress(batches, desc=f"sampling shard {index}/{count}", unit="batch"):
            samples.extend(_sample_batch(plan.rows[b_lo:b_hi], b_lo, plan.sizes[b_lo], run, stats, staging))

        (staging / "stats").mkdir()
        if inception is not None:
            real_statistics(plan, batches, inception, cfg).save(staging / "stats" / "real.npz")
            for v, st in stats.items():
                st.save(staging / "stats" / f"{v}.npz")
        with open(staging / SAMPLES, "w") as fh:
            for rec in samples:
                fh.write(json.dumps(rec) + "\n")
        (staging / TRAINING_CURVE).write_text(json.dumps(read_training_curve(adapter, cfg.storage)))
        info = _shard_info(run, part, fingerprint)
        (staging / SHARD_INFO).write_text(json.dumps(info, indent=2))
        cfg.write(staging)
    log.info("shard %d/%d: samples %d..%d -> %s", index, count, part.lo, part.hi, out)
    return info


def _load_run(adapter: str, fidelity: list, cfg: Any) -> ShardRun:
    """Load the base model, the adapter and the scorers a shard needs, and the buckets the
    samples are generated at (``encode.buckets`` at the evaluation resolution)."""
    from ..data.buckets import bucket_list
    from ..devices import default_device, inference_dtype
    from ..encode.bucketing import bucket_multiple
    from ..models.family import check_adapter_fits
    from ..models.resolve import load_adapter, load_base_model
    from .sampling import build_generators
    from .training_curve import training_run_reference

    ev = cfg.evaluate
    resolution = eval_resolution(cfg)
    device = default_device().type
    ref = training_run_reference(adapter, cfg.model, cfg.storage)
    dtype = inference_dtype(ref.dtype, device)
    base = load_base_model(ref, cfg.storage, dtype=dtype, local_files_only=cfg.model.local_files_only)
    net = load_adapter(adapter, cfg.model, cfg.storage, dtype=dtype)
    check_adapter_fits(net, base, resolution=resolution)
    buckets = bucket_list(cfg.encode.buckets, resolution, bucket_multiple(base, cfg.model))
    generators = build_generators(base, net, ev.scheduler, device)
    variants = [WITHOUT] + [adapter_variant(s) for s in ev.conditioning_scales]
    inception, fid_missing = load_inception(cfg, device)
    clip = None
    if ev.clip_model:
        from .clip_score import ClipScorer

        clip = ClipScorer(ev.clip_model, cfg, device)
    return ShardRun(
        ev=ev, adapter=adapter, adapter_digest=_adapter_digest(net), ref=ref, family=base.family,
        resolution=resolution, buckets=buckets, device=device, variants=variants, generators=generators, fidelity=fidelity,
        clip=clip, inception=inception, fid_missing=fid_missing,
    )


def _shard_info(run: ShardRun, part: ShardSlice, fingerprint: str) -> dict:
    """``shard.json``: what a shard evaluated, with what, so the merge can check shards agree."""
    return {
        "shard": part.index,
        "num_shards": part.count,
        "range": [part.lo, part.hi],
        "num_samples_total": part.total,
        "fingerprint": fingerprint,
        "family": run.family,
        "base_model": run.ref.path,
        "base_model_ref": run.ref.to_dict(),
        "adapter": str(run.adapter),
        "resolution": run.resolution,
        "buckets": [list(b) for b in run.buckets],
        "device": run.device,
        "variants": run.variants,
        "conditioning_scales": list(run.ev.conditioning_scales),
        "fidelity": [{"name": m.name, "higher_is_better": m.higher_is_better, "description": m.description}
                     for m in run.fidelity],
        "fid_missing": run.fid_missing,
        "feature_extractor": EXTRACTOR_SETTINGS if run.inception is not None else None,
        "clip_backbone": run.clip.backbone if run.clip is not None else None,
    }


def _sample_batch(batch: list, start: int, size: tuple[int, int], run: ShardRun, stats: dict,
                  staging: Path) -> list[dict]:
    """Generate one batch of one bucket (``size``, height x width) without and with the adapter
    (each scale), score every image against its condition (and the real image, the ceiling),
    save them; returns the per-sample records."""
    from .sampling import generate

    ev, generators = run.ev, run.generators
    resolution = size[0] if size[0] == size[1] else size
    ids = list(range(start, start + len(batch)))
    seeds = [ev.seed + i for i in ids]
    prompts = [r.text for r in batch]
    conditions, metas = _conditions(batch, size)
    cond_t = _to_tensor(np.stack([np.asarray(c) for c in conditions]))
    images = {WITHOUT: generate(generators, prompts, seeds, resolution, ev)}
    for s in ev.conditioning_scales:
        # At scale 0 every residual is multiplied by 0 before it is added: the denoising is the
        # plain generator's, bit for bit (tested), so its images are reused, not generated again.
        images[adapter_variant(s)] = images[WITHOUT] if s == 0 else generate(
            generators, prompts, seeds, resolution, ev, conditions, s)
    records = [{"index": i, "id": r.id, "file": sample_file_name(i, r.id), "seed": sd, "prompt": p}
               for i, r, sd, p in zip(ids, batch, seeds, prompts)]
    if len(run.buckets) > 1:
        for rec in records:
            rec["bucket"] = f"{size[0]}x{size[1]}"
    reals = np.stack([np.asarray(_load_real(r, size)) for r in batch])
    clip, inception = run.clip, run.inception
    for v, imgs in [*images.items(), (REAL, reals)]:
        img_t = _to_tensor(imgs)
        for metric in run.fidelity:
            for rec, value in zip(records, metric.compute(img_t, cond_t, metas)):
                rec[f"{metric.name}/{v}"] = float(value)
        if clip is not None:
            for rec, value in zip(records, clip(img_t, prompts)):
                rec[f"clip_score/{v}"] = float(value)
        if inception is not None and v != REAL:
            stats[v].update(inception(img_t))
        folder = staging / REAL if v == REAL else staging / "images" / v
        for rec, im in zip(records, imgs):
            Image.fromarray(im).save(folder / rec["file"])
    for rec, c in zip(records, conditions):
        c.save(staging / "conditions" / rec["file"])
    return records


def _conditions(batch: list, size: tuple[int, int]) -> tuple[list, list]:
    """The batch's conditions cropped to ``size`` (cover, centre crop) and each row's metadata
    with where that crop sits in the original: ``_scale`` (this size / original size) and
    ``_offset`` (the crop's left, top in the resized condition), which the circle metric needs
    to place the row's geometry."""
    from .sampling import cover_crop, cover_offset, cover_scale

    conditions, metas = [], []
    for r in batch:
        original = r.load_condition()
        conditions.append(cover_crop(original, size, Image.BILINEAR))
        meta = {**r.meta, "_scale": cover_scale(*original.size, size)}
        offset = cover_offset(*original.size, size)
        if offset != (0, 0):
            meta["_offset"] = list(offset)
        metas.append(meta)
    return conditions, metas


def merge_shards(shards: list[str], out: str, cfg: Any, gate: bool = False) -> dict:
    """Combine a complete set of shard outputs into ``out``: metrics.json, samples.csv, grid.png,
    report.md/.html, images and the resolved config. Raises :class:`GateFailed` (after
    publishing) when ``gate`` is set and a configured threshold is missed."""
    from .report import compute_metrics, evaluate_gate, write_outputs

    if not shards:
        raise UsageError("merge needs at least one shard (--shards E1 E2 ...)")
    local = []
    infos = []
    for s in shards:
        try:
            storage.read_manifest(s, cfg)
        except storage.NotPublished as exc:
            raise DataError(f"shard {s}: {exc}") from None
        path = storage.materialize(s, cfg, kind="eval-shards")
        info_path = path / SHARD_INFO
        if not info_path.exists():
            raise DataError(f"{s} is not an evaluation shard (no {SHARD_INFO})")
        local.append(path)
        infos.append(json.loads(info_path.read_text()))
    first = infos[0]
    for s, info in zip(shards, infos):
        if info["fingerprint"] != first["fingerprint"]:
            raise DataError(f"shard {s} was made with other settings, adapter or rows than {shards[0]}; "
                            "evaluate all shards with the same configuration")
    found = sorted(info["shard"] for info in infos)
    if found != list(range(first["num_shards"])):
        raise DataError(f"shards {found} of {first['num_shards']} given: each shard 0..{first['num_shards'] - 1} "
                        "is needed exactly once")
    order = sorted(range(len(infos)), key=lambda k: infos[k]["shard"])
    local = [local[k] for k in order]
    samples = []
    for path in local:
        samples.extend(json.loads(line) for line in (path / SAMPLES).read_text().splitlines() if line.strip())
    stats: Optional[dict] = None
    if first["fid_missing"] is None:
        stats = {name: FeatureStats.merged([FeatureStats.load(p / "stats" / f"{name}.npz") for p in local])
                 for name in ["real", *first["variants"]]}
    metrics = compute_metrics(samples, stats, first, cfg)
    metrics["gate"] = evaluate_gate(metrics, first, cfg.evaluate.gate)
    with storage.publish(out, cfg, extra={"stage": "evaluate", "shards": len(shards)}) as staging:
        write_outputs(staging, local, samples, metrics, first, cfg)
        cfg.write(staging)
    log.info("evaluation -> %s (gate %s)", out, "passed" if metrics["gate"]["passed"] else "FAILED")
    if gate and not metrics["gate"]["passed"]:
        failed = [c for c in metrics["gate"]["checks"] if not c["passed"]]
        raise GateFailed("evaluation gate failed: " + "; ".join(
            f"{c['name']}: {c['value']} (needs {c['op']} {c['threshold']})" for c in failed))
    return metrics


def evaluate(adapter: str, data: str, validated: str, out: str, cfg: Any, gate: bool = False) -> dict:
    """Single-process evaluation: one shard, then the same merge as a sharded run."""
    with tempfile.TemporaryDirectory(prefix="t2iops-eval-") as tmp:
        shard_dir = str(Path(tmp) / "shard-0")
        evaluate_shard(adapter, data, validated, shard_dir, cfg, (0, 1))
        return merge_shards([shard_dir], out, cfg, gate=gate)
