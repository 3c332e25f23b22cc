"""Merged metrics, the gate, and the outputs people read.

``metrics.json`` is a DVC metric: nested dicts of numbers (``dvc metrics diff`` compares them
key by key), the gate's verdict included. Names: ``<metric>.with_adapter`` (first
``evaluate.conditioning_scales`` entry), ``.without_adapter``, ``.lift`` (with - without);
further scales go under ``sweep.scale_<s>``; ``.real_images`` is the same metric on the
dataset's own images (the ceiling). ``report.md`` links and ``report.html`` embeds (as data:
URIs, so a KFP HTML artifact shows it as it is) the figures: ``grid.png`` (the best and the
worst samples by the primary fidelity metric), ``loss_curve.png`` (the adapter's training
loss, when the training run is readable) and ``sweep.png`` (every metric vs the conditioning
scale, when ``evaluate.conditioning_scales`` has several values).
"""
from __future__ import annotations

import base64
import csv
import json
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .clip_score import dataset_clip_score
from .fid import fids_against, kernel_inception_distance
from .figures import (grid_columns, grid_selection, loss_curve_figure, make_grid, ranking_metric, sample_file,
                      sweep_figure, sweep_table)
from .report_pages import GRID, LOSS_CURVE, SWEEP, headline, markdown, meanings, page
from .training_curve import TRAINING_CURVE

WITHOUT = "without_adapter"
REAL = "real_images"
FULL_RANK_N = 2048


def _per_sample_metrics(info: dict, samples: list[dict]) -> list[dict]:
    """Fidelity metrics (primary first) plus CLIP score when it was measured."""
    out = list(info["fidelity"])
    if samples and any(k.startswith("clip_score/") for k in samples[0]):
        out.append({"name": "clip_score", "higher_is_better": True, "description": "CLIP score (100 x cosine)"})
    return out


def _has_real(samples: list[dict], name: str) -> bool:
    """Shards written before the real-image reference existed lack it; so may a user's estimator."""
    return bool(samples) and all(f"{name}/{REAL}" in s for s in samples)


def compute_metrics(samples: list[dict], stats: Optional[dict], info: dict, cfg: Any) -> dict:
    variants = info["variants"]
    primary = variants[1]
    metrics: dict[str, Any] = {"num_samples": len(samples)}
    sweep: dict[str, dict] = {f"scale_{v.split('@')[1]}": {} for v in variants[2:]}

    def aggregate(name: str, v: str) -> float:
        values = np.array([s[f"{name}/{v}"] for s in samples], dtype=np.float64)
        return dataset_clip_score(values) if name == "clip_score" else float(values.mean())

    for m in _per_sample_metrics(info, samples):
        with_, without = aggregate(m["name"], primary), aggregate(m["name"], WITHOUT)
        metrics[m["name"]] = {"with_adapter": with_, "without_adapter": without, "lift": with_ - without}
        if _has_real(samples, m["name"]):
            metrics[m["name"]]["real_images"] = aggregate(m["name"], REAL)
        for v in variants[2:]:
            sweep[f"scale_{v.split('@')[1]}"][m["name"]] = aggregate(m["name"], v)
    if stats is not None and len(samples) >= 2:
        fid = fids_against(stats["real"], {v: stats[v] for v in variants})
        kid = {}
        real = stats["real"].all_features()
        ev = cfg.evaluate
        for v in variants:
            kid[v] = kernel_inception_distance(real, stats[v].all_features(), ev.kid_subsets, ev.kid_subset_size,
                                               seed=ev.seed)
        metrics["fid"] = {"with_adapter": fid[primary], "without_adapter": fid[WITHOUT]}
        metrics["kid"] = {"with_adapter": kid[primary][0], "with_adapter_std": kid[primary][1],
                          "without_adapter": kid[WITHOUT][0], "without_adapter_std": kid[WITHOUT][1],
                          "subset_size": kid[primary][2]}
        for v in variants[2:]:
            sweep[f"scale_{v.split('@')[1]}"].update(fid=fid[v], kid=kid[v][0])
    if sweep:
        metrics["sweep"] = sweep
    return metrics


def evaluate_gate(metrics: dict, info: dict, gate_cfg: Any) -> dict:
    """``{"passed": bool, "checks": [{name, value, op, threshold, passed}]}``. The fidelity lift
    is signed so that higher is better (an RMSE must *drop* by at least the threshold)."""
    checks = []

    def check(name: str, value: Optional[float], op: str, threshold: float, note: str = "") -> None:
        ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        entry = {"name": name, "value": value, "op": op, "threshold": threshold, "passed": bool(ok)}
        if note:
            entry["note"] = note
        checks.append(entry)

    primary = info["fidelity"][0]
    if gate_cfg.min_fidelity_lift is not None:
        lift = metrics[primary["name"]]["lift"]
        check(f"{primary['name']}_lift", lift if primary["higher_is_better"] else -lift, ">=", gate_cfg.min_fidelity_lift)
    missing = info.get("fid_missing") or "FID not computed"
    if gate_cfg.max_fid is not None:
        value = metrics.get("fid", {}).get("with_adapter")
        check("fid", value, "<=", gate_cfg.max_fid, "" if value is not None else missing)
    if gate_cfg.max_kid is not None:
        value = metrics.get("kid", {}).get("with_adapter")
        check("kid", value, "<=", gate_cfg.max_kid, "" if value is not None else missing)
    if gate_cfg.min_circle_iou is not None:
        value = metrics.get("circle_iou", {}).get("with_adapter")
        check("circle_iou", value, ">=", gate_cfg.min_circle_iou,
              "" if value is not None else "circle IoU is measured for condition_kind=circle_outline only")
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


# ---------------------------------------------------------------------------------------
def notes(metrics: dict, info: dict) -> list[str]:
    out = []
    n = metrics["num_samples"]
    if info.get("fid_missing"):
        out.append(f"FID and KID are missing: {info['fid_missing']}")
    elif "fid" in metrics:
        out.append("FID/KID use torch-fidelity's Inception (2048-d pool features) with the TF1.x-compatible "
                   "resize, i.e. torchmetrics' antialias=False: the setting behind published FID numbers "
                   "(torchmetrics >= 1.8 defaults to antialias=True, which gives different values).")
        if n < FULL_RANK_N:
            out.append(f"N = {n} < {FULL_RANK_N}: the 2048x2048 feature covariance is rank-deficient and FID is "
                       "biased upwards at small N; compare FIDs only at equal N, and prefer KID (unbiased) here.")
    if any("real_images" in v for v in metrics.values() if isinstance(v, dict)):
        out.append("real images: the dataset's own images of the same samples, resized to the evaluation "
                   "resolution and scored against their conditions exactly like the generated ones: the value "
                   "a perfectly faithful generator would reach with this metric.")
    from .condition_fidelity import notes_for

    out.extend(notes_for(info.get("condition_kind", "")))
    return out


def _rows_for_table(metrics: dict, info: dict, samples: list[dict]) -> list[tuple]:
    rows = []
    for m in _per_sample_metrics(info, samples):
        v = metrics[m["name"]]
        rows.append((m["name"], v["without_adapter"], v["with_adapter"], v["lift"], v.get("real_images", "-"),
                     "higher" if m["higher_is_better"] else "lower"))
    if "fid" in metrics:
        f, k = metrics["fid"], metrics["kid"]
        rows.append(("fid", f["without_adapter"], f["with_adapter"], f["with_adapter"] - f["without_adapter"], "-", "lower"))
        rows.append(("kid", k["without_adapter"], k["with_adapter"], k["with_adapter"] - k["without_adapter"], "-", "lower"))
    return rows


def _settings(info: dict, cfg: Any) -> list[tuple[str, Any]]:
    ev = cfg.evaluate
    buckets = info.get("buckets") or []
    sizes = [("buckets (height x width)", ", ".join(f"{h}x{w}" for h, w in buckets))] if len(buckets) > 1 else []
    return [
        ("adapter", info["adapter"]), ("base model", f"{info['base_model']} ({info['family']})"),
        ("split / samples", f"{ev.split} / {info['num_samples_total']}"), ("resolution", info["resolution"]), *sizes,
        ("scheduler", ev.scheduler), ("steps", ev.num_inference_steps), ("guidance scale", ev.guidance_scale),
        ("negative prompt", ev.negative_prompt or "(none)"), ("batch size", ev.batch_size),
        ("conditioning scales", ", ".join(f"{s:g}" for s in info["conditioning_scales"])),
        ("conditioning factor (SDXL)", ev.conditioning_factor), ("seeds", f"{ev.seed} + sample index"),
        ("condition kind", ev.condition_kind), ("baseline", "the plain base pipeline, same seeds and prompts"),
        ("feature extractor", json.dumps(info["feature_extractor"]) if info["feature_extractor"] else "(none)"),
        ("CLIP backbone", info.get("clip_backbone") or "(not measured)"),
    ]


def write_outputs(staging: Path, local_shards: list[Path], samples: list[dict], metrics: dict, info: dict, cfg: Any) -> None:
    info = {**info, "condition_kind": cfg.evaluate.condition_kind}
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    per_sample = _per_sample_metrics(info, samples)
    _write_samples_csv(staging / "samples.csv", samples, per_sample, info["variants"])
    for path in local_shards:
        shutil.copytree(path / "images", staging / "images", dirs_exist_ok=True)
        shutil.copytree(path / "conditions", staging / "conditions", dirs_exist_ok=True)
        if (path / REAL).is_dir():
            shutil.copytree(path / REAL, staging / REAL, dirs_exist_ok=True)

    selection = grid_selection(samples, info, cfg.evaluate.grid_rows)
    columns = grid_columns(info, all((path / REAL).is_dir() for path in local_shards))
    figures = {GRID: make_grid(local_shards, selection, info, columns)}
    curve = _training_curve(local_shards[0])
    loss_figure = loss_curve_figure(curve)
    if loss_figure is not None:
        figures[LOSS_CURVE] = loss_figure
    sweep = None
    if len(info["variants"]) > 2:
        names = [m["name"] for m in per_sample] + [n for n in ("fid", "kid") if n in metrics]
        sweep = (["conditioning scale", *names], sweep_table(metrics, info, names))
        figures[SWEEP] = sweep_figure(metrics, info, per_sample)
    embedded = {}
    for name, image in figures.items():
        image.save(staging / name)
        embedded[name] = base64.b64encode((staging / name).read_bytes()).decode()
    table = _rows_for_table(metrics, info, samples)
    shown = [row[0] for row in table] + (["loss"] if LOSS_CURVE in figures else [])
    ranked_by = ranking_metric(info)
    scale = info["variants"][1].split("@")[1]
    parts = {
        "table": table, "settings": _settings(info, cfg),
        "caveats": notes(metrics, info) + ([f"loss curve: {curve['missing']}"] if curve.get("missing") else []),
        "gate": metrics["gate"], "metrics": metrics, "sweep": sweep,
        "headline": headline(metrics, ranked_by, scale),
        "meanings": meanings(shown, {m["name"]: m.get("description", "") for m in per_sample}),
        "grid_caption": f"the best and the worst samples by {ranked_by['name']} with the adapter (scale {scale}), "
                        "best first; columns",
        "grid_columns": [label.replace("\n", " ") for _, label in columns],
        "loss_source": curve.get("source"),
    }
    (staging / "report.md").write_text(markdown(parts, {n: n for n in figures}))
    (staging / "report.html").write_text(page(parts, {n: f"data:image/png;base64,{b}" for n, b in embedded.items()}))


def _training_curve(shard: Path) -> dict:
    path = shard / TRAINING_CURVE
    if not path.is_file():
        return {"steps": [], "loss": [], "missing": "the evaluation shards predate loss curves"}
    curve = json.loads(path.read_text())
    steps, losses = curve.get("steps"), curve.get("loss")
    if not (_numbers(steps) and _numbers(losses) and len(steps) == len(losses)):
        return {"steps": [], "loss": [], "missing": f"{path.name} in the shard is malformed"}
    return curve


def _numbers(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(x, (int, float)) for x in values)


def _write_samples_csv(path: Path, samples: list[dict], per_sample: list[dict], variants: list[str]) -> None:
    # A bucket column only when the samples were generated at several sizes (one size: the
    # resolution says it, and the file stays as it was before buckets existed).
    bucket = ["bucket"] if any("bucket" in s for s in samples) else []
    columns = ["index", "id", "file", "seed", "prompt", *bucket]
    real = {m["name"]: _has_real(samples, m["name"]) for m in per_sample}
    for m in per_sample:
        columns += [f"{m['name']}_without_adapter", f"{m['name']}_with_adapter", f"{m['name']}_lift"]
        columns += [f"{m['name']}_{v}" for v in variants[2:]]
        columns += [f"{m['name']}_{REAL}"] if real[m["name"]] else []
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for s in samples:
            row = [s["index"], s["id"], sample_file(s), s["seed"], s["prompt"]] + [s.get("bucket", "") for _ in bucket]
            for m in per_sample:
                w, wo = s[f"{m['name']}/{variants[1]}"], s[f"{m['name']}/{WITHOUT}"]
                row += [wo, w, w - wo] + [s[f"{m['name']}/{v}"] for v in variants[2:]]
                row += [s[f"{m['name']}/{REAL}"]] if real[m["name"]] else []
            writer.writerow(row)
