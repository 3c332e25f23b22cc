"""``export_adapter(adapter_uri, out, cfg)``: the export stage, top to bottom.

1. find and load the adapter (folder or training output, local or s3://);
2. write ``adapter.onnx`` (fp32) and ``adapter_fp16.onnx``, check both with ``onnx.checker``;
3. the gate: onnxruntime vs PyTorch at several batches/resolutions on random and real
   conditions (and at the square, widest and tallest training bucket, unless
   ``encode.buckets`` is ``square``), and the base model's pipeline with ONNX vs PyTorch
   residuals on one seed;
4. TensorRT readiness: operator audit, shape profiles covering every training bucket,
   trtexec line, engine check if possible;
5. ``export.json`` (with the training buckets) + ``README.md``, then publish. Any failed check raises before publishing,
   so ``out`` never holds an export that did not pass.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import __version__, storage
from ..config import Config
from ..errors import ModelError, T2IError
from . import serving_spec as ss
from .model_card import model_card
from .onnx_export import INPUT_NAME, check_graph, convert_fp16, export_fp32, model_files
from .ort_adapter import OrtT2IAdapter, check_condition_size, make_session
from .parity import ImageSettings, bucket_parity_shapes, check_parity, load_check_base, parity_shapes, pipeline_parity
from .source import AdapterSource, base_model_record, base_model_reference, load_torch_adapter, locate_adapter
from .trt_readiness import EngineReference, readiness_report

logger = logging.getLogger(__name__)

FP32_NAME = "adapter.onnx"
FP16_NAME = "adapter_fp16.onnx"


class ExportCheckFailed(T2IError):
    """The exported graph does not reproduce the PyTorch adapter (nothing was published)."""


@dataclass(frozen=True)
class ExportInputs:
    """What an export starts from: the adapter (its folder and run records, and the loaded
    PyTorch module), its base model and the evaluation metrics, gathered before any graph is
    written so that a bad input fails fast."""

    source: AdapterSource
    adapter: Any  # the PyTorch T2IAdapter
    ref: Any  # the base model's BaseModelRef
    base: dict  # the serving spec's base_model record
    metrics: Optional[dict]
    cwd: Optional[Path]  # where dvc.lock and the git checkout are looked up
    started: float
    buckets: list  # the training buckets, (height, width), square first
    buckets_setting: Any  # encode.buckets as configured
    buckets_source: str  # where ``buckets`` came from (the run's summary.json, or the setting)

    @property
    def bucket_shapes(self) -> list:
        """The buckets the checks and the TensorRT profiles must cover beyond export.resolutions:
        none with ``encode.buckets: square`` (the square is what export.resolutions describe)."""
        return [] if self.buckets_setting == "square" else self.buckets


@dataclass(frozen=True)
class Graphs:
    """The written ONNX graphs (no fp16 one with export.fp16=false) and a CPU onnxruntime
    session on each, by precision: ``{"fp32": session, "fp16": session}``."""

    fp32_path: Path
    fp16_path: Optional[Path]
    sessions: dict


@dataclass(frozen=True)
class CheckResults:
    """What the export's checks measured: the onnxruntime parity cases, the end-to-end pipeline
    check and the TensorRT readiness report."""

    parity: list
    pipeline: dict
    tensorrt: dict


def export_adapter(
    adapter_uri: str, out: str, cfg: Config, metrics_uri: Optional[str] = None, cwd: Optional[Path] = None,
    run: Optional[dict] = None,
) -> dict:
    """Export, validate and publish. Returns the serving spec written to ``out/export.json``.
    ``run``: in a pipeline step, ``{"git_sha": ..., "pulled": <the pull step's record>}``, the
    provenance the model card states instead of the working directory's git and dvc.lock."""
    inputs = _gather_inputs(adapter_uri, metrics_uri, cwd, cfg)
    with storage.publish(out, cfg) as staging:
        graphs = _write_graphs(inputs.adapter, staging, cfg)
        checks = _run_checks(inputs, graphs, cfg)
        shutil.copytree(inputs.source.adapter_dir, staging / "adapter", ignore=shutil.ignore_patterns(".*"))
        spec = _serving_spec(inputs, graphs, checks, staging, cfg)
        if run is not None:
            spec = ss.pipeline_provenance(spec, run.get("git_sha", ""), run.get("pulled") or {})
        ss.write_serving_spec(staging, spec)
        (staging / "README.md").write_text(model_card(spec))
        cfg.write(staging)
    logger.info("exported %s -> %s (fp32 worst relative error %.2e)", adapter_uri, out, spec["validation"]["fp32_max_relative_error"])
    return spec


def _gather_inputs(adapter_uri: str, metrics_uri: Optional[str], cwd: Optional[Path], cfg: Config) -> ExportInputs:
    """Locate and load the adapter, name its base model, check the configured sizes fit it and
    read the metrics: everything that can fail before the heavy work."""
    ecfg = cfg.export
    source = locate_adapter(adapter_uri, cfg)
    ref, where = base_model_reference(source, cfg)  # a model.* setting naming another model fails here
    base = base_model_record(ref, where)
    adapter = load_torch_adapter(source)
    multiple = adapter.total_downscale_factor
    for r in ecfg.resolutions:
        check_condition_size(r, r, multiple, what=f"export.resolutions entry {r}")
    for r in ecfg.parity_resolutions or ecfg.resolutions:
        check_condition_size(r, r, multiple, what=f"parity size {r}")
    buckets, buckets_source = training_buckets(cfg, adapter, source.training_summary)
    metrics = ss.read_metrics(metrics_uri, cfg)
    return ExportInputs(source=source, adapter=adapter, ref=ref, base=base, metrics=metrics, cwd=cwd,
                        started=time.time(), buckets=buckets, buckets_setting=cfg.encode.buckets,
                        buckets_source=buckets_source)


def bucket_multiple(adapter: Any) -> int:
    """What each side of a bucket is a multiple of: the adapter's total downscale factor, in
    pixels. It is the number :func:`t2iops.encode.bucketing.bucket_multiple` gives (the least
    common multiple of the VAE's factor and this one), read here off the exported adapter: the
    export does not load the base model, and the adapter's first downscale is already a multiple
    of the VAE's factor."""
    return math.lcm(int(adapter.downscale_factor), int(adapter.total_downscale_factor))


def training_buckets(cfg: Config, adapter: Any, summary: Optional[dict] = None) -> tuple[list, str]:
    """The aspect-ratio buckets the adapter was trained at, (height, width), most square first,
    and where that list came from. The training run's ``summary.json`` says which buckets its
    training split filled (``buckets[].samples``): a configured bucket no sample fell into is not
    one the adapter was trained at, and is left out. Without a summary (an adapter folder on its own)
    the list is ``encode.buckets`` at ``encode.resolution``."""
    from ..data.buckets import bucket_list

    rows = (summary or {}).get("buckets")
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        try:
            seen = [(int(r["height"]), int(r["width"])) for r in rows if int(r.get("samples", 0)) > 0]
        except (KeyError, TypeError, ValueError):
            seen = []
        if seen:
            seen.sort(key=lambda b: abs(math.log(b[1] / b[0])))  # as bucket_list orders them
            return seen, "the training run's summary.json (buckets its training split filled)"
    return (bucket_list(cfg.encode.buckets, cfg.encode.resolution, bucket_multiple(adapter)),
            "encode.buckets at encode.resolution (no training summary.json lists the buckets)")


def _write_graphs(adapter: Any, staging: Path, cfg: Config) -> Graphs:
    """``adapter.onnx`` and, with export.fp16, ``adapter_fp16.onnx``, each checked by onnx.checker."""
    ecfg = cfg.export
    fp32_path = export_fp32(adapter, staging / FP32_NAME, ecfg.opset, sample_size=min(ecfg.resolutions))
    check_graph(fp32_path)
    fp16_path = None
    if ecfg.fp16:
        fp16_path = convert_fp16(fp32_path, staging / FP16_NAME)
        check_graph(fp16_path)
    sessions = {"fp32": make_session(fp32_path, ["CPUExecutionProvider"])}
    if fp16_path is not None:
        sessions["fp16"] = make_session(fp16_path, ["CPUExecutionProvider"])
    return Graphs(fp32_path=fp32_path, fp16_path=fp16_path, sessions=sessions)


def _run_checks(inputs: ExportInputs, graphs: Graphs, cfg: Config) -> CheckResults:
    """The gate: onnxruntime vs PyTorch parity, the end-to-end pipeline check, TensorRT
    readiness. Raises :class:`ExportCheckFailed` on a failed check, before anything is published."""
    ecfg = cfg.export
    adapter = inputs.adapter
    shapes = parity_shapes(ecfg.parity_resolutions or ecfg.resolutions, ecfg.max_batch, adapter.total_downscale_factor)
    shapes += bucket_parity_shapes(inputs.bucket_shapes, shapes)
    tolerances = {"fp32": ecfg.fp32_tolerance, "fp16": ecfg.fp16_tolerance}
    cases = check_parity(adapter, graphs.sessions, tolerances, shapes, seed=cfg.seed, synth_cfg=cfg.data.synth)
    failed = [c for c in cases if not c.passed]
    if failed:
        worst = max(failed, key=lambda c: c.relative_error)
        raise ExportCheckFailed(
            f"{len(failed)} of {len(cases)} parity cases failed; worst: {worst.model} on a {worst.condition} "
            f"condition {worst.batch}x3x{worst.height}x{worst.width}, relative error {worst.relative_error:.3g} "
            f"> tolerance {worst.tolerance:.3g} (export.{worst.model}_tolerance); nothing was published"
        )
    pipeline = _pipeline_check(inputs, graphs.fp32_path, cfg)

    tensorrt = readiness_report(
        graphs.fp32_path, graphs.fp16_path, ecfg.resolutions, ecfg.max_batch,
        EngineReference(adapter=adapter, shapes=shapes, tolerance=ecfg.fp16_tolerance), buckets=inputs.bucket_shapes,
    )
    trt_problems = [p for a in tensorrt["audit"].values() for p in a["problems"]]
    if trt_problems:
        logger.warning("TensorRT audit: %d problem(s), first: %s", len(trt_problems), trt_problems[0])
    if ecfg.require_tensorrt_ready and (trt_problems or tensorrt["engine_check"]["status"] == "failed"):
        raise ExportCheckFailed(
            f"TensorRT readiness failed (export.require_tensorrt_ready=true): "
            f"{trt_problems[0] if trt_problems else tensorrt['engine_check']}"
        )
    return CheckResults(parity=cases, pipeline=pipeline, tensorrt=tensorrt)


def _serving_spec(inputs: ExportInputs, graphs: Graphs, checks: CheckResults, staging: Path, cfg: Config) -> dict:
    """``export.json``: the serving spec (graphs, I/O contract, base model, data, checks)."""
    ecfg = cfg.export
    source, adapter = inputs.source, inputs.adapter
    multiple = adapter.total_downscale_factor
    cases = checks.parity
    return {
        "schema_version": ss.SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "t2iops_version": __version__,
        "family": source.family,
        "adapter": {
            "source": source.uri,
            "type": source.adapter_type,
            "in_channels": source.config.get("in_channels", 3),
            "channels": source.config.get("channels"),
            "num_res_blocks": source.config.get("num_res_blocks"),
            "downscale_factor": adapter.downscale_factor,
            "total_downscale_factor": multiple,
            "parameters": sum(p.numel() for p in adapter.parameters()),
        },
        "opset": ecfg.opset,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "layout": "NCHW",
            "channel_order": "RGB",
            "range": [0.0, 1.0],
            "normalization": "pixel / 255; no mean/std",
            "dynamic_axes": {"batch": 0, "height": 2, "width": 3},
            "height_width_multiple_of": multiple,
        },
        "outputs": [
            {"name": o.name, "unet_argument": f"down_intrablock_additional_residuals[{i}]"}
            for i, o in enumerate(graphs.sessions["fp32"].get_outputs())
        ],
        "residual_shapes": _residual_shapes(graphs.sessions["fp32"], ecfg.resolutions, inputs.bucket_shapes),
        "buckets": {
            "setting": cfg.encode.buckets,
            "resolution": cfg.encode.resolution,
            "multiple_of": bucket_multiple(adapter),
            "sizes": [[h, w] for h, w in inputs.buckets],
            "sizes_from": inputs.buckets_source,
            "order": "height, width",
        },
        "usage": {
            "adapter_conditioning_scale": recommended_scale(cfg),
            "adapter_conditioning_factor": cfg.evaluate.conditioning_factor,
            "source": "evaluate.conditioning_scales[0] and evaluate.conditioning_factor",
            "classifier_free_guidance": "concatenate each residual twice along the batch (uncond, cond)",
        },
        "files": _file_records(staging, graphs),
        "base_model": inputs.base,
        "training_data": ss.data_version(source, cfg, inputs.cwd),
        "git": ss.git_commit(inputs.cwd),
        "metrics": inputs.metrics,
        "validation": {
            "fp32_tolerance": ecfg.fp32_tolerance,
            "fp16_tolerance": ecfg.fp16_tolerance,
            "fp32_max_relative_error": _worst(cases, "fp32"),
            "fp16_max_relative_error": _worst(cases, "fp16"),
            "parity": [c.as_dict() for c in cases],
            "pipeline": checks.pipeline,
        },
        "tensorrt": checks.tensorrt,
        "notes": source.notes,
        "export_seconds": round(time.time() - inputs.started, 2),
    }


def recommended_scale(cfg: Config) -> float:
    scales = cfg.evaluate.conditioning_scales
    return float(scales[0]) if scales else float(cfg.train.conditioning_scale)


def _worst(cases, model: str) -> Optional[float]:
    errors = [c.relative_error for c in cases if c.model == model]
    return max(errors) if errors else None


def _residual_shapes(session, resolutions: list[int], buckets: list) -> dict:
    """Output shapes at batch 1 for each profile resolution (keyed by the side) and each other
    training bucket (keyed ``HxW``), read off the running graph."""
    import numpy as np

    sizes = [(str(r), r, r) for r in sorted(set(resolutions))]
    sizes += [(f"{h}x{w}", h, w) for h, w in buckets if not (h == w and h in resolutions)]
    shapes = {}
    for key, height, width in sizes:
        outputs = session.run(None, {INPUT_NAME: np.zeros((1, 3, height, width), dtype=np.float32)})
        shapes[key] = {o.name: list(v.shape) for o, v in zip(session.get_outputs(), outputs)}
    return shapes


def _file_records(staging: Path, graphs: Graphs) -> dict:
    """Path, size and sha256 of every file a server loads: the graphs (with their external
    data) and the diffusers weights."""
    records = {}
    for key, path in (("onnx_fp32", graphs.fp32_path), ("onnx_fp16", graphs.fp16_path)):
        if path is None:
            continue
        files = model_files(path)
        records[key] = ss.file_record(files[0], staging)
        records[key]["external_data"] = ss.file_record(files[1], staging) if len(files) > 1 else None
        if key == "onnx_fp16":
            records[key].update(io_dtype="float32", compute_dtype="float16")
    for weights in sorted((staging / "adapter").glob("*")):
        records[f"adapter/{weights.name}"] = ss.file_record(weights, staging)
    return records


def _pipeline_check(inputs: ExportInputs, fp32_path: Path, cfg: Config) -> dict:
    """End-to-end: same generator, same seed, PyTorch vs ONNX residuals. Returns a status dict
    (skipped with a reason in ``auto`` mode when the base model is not at hand)."""
    source, torch_adapter, ref = inputs.source, inputs.adapter, inputs.ref
    ecfg = cfg.export
    mode = ecfg.pipeline_check
    result: dict[str, Any] = {"mode": mode, "tolerance": ecfg.pipeline_tolerance, "base_model": ref.path}
    if mode == "skip":
        return {**result, "status": "skipped", "reason": "export.pipeline_check=skip"}

    def skip_or_fail(reason: str) -> dict:
        if mode == "required":
            raise ModelError(f"end-to-end pipeline check (export.pipeline_check=required): {reason}")
        logger.warning("skipping the end-to-end pipeline check: %s", reason)
        return {**result, "status": "skipped", "reason": reason}

    base_id = str(ref.path)
    if storage.is_s3(base_id):
        try:
            base_path = storage.materialize(base_id, cfg, kind="models")
        except FileNotFoundError:
            return skip_or_fail(f"base model {base_id} does not exist")
    elif Path(base_id).is_dir():
        base_path = Path(base_id)
    elif mode == "required":
        base_path = base_id  # a hub id: from_pretrained resolves it (cache or download)
    else:
        return skip_or_fail(f"base model {base_id!r} is not a local folder or s3:// prefix (auto mode downloads nothing)")
    if isinstance(base_path, Path) and not (base_path / "model_index.json").is_file():
        return skip_or_fail(f"base model {base_id} has no model_index.json (not a diffusers pipeline folder)")

    onnx_adapter = OrtT2IAdapter(fp32_path, torch_adapter.total_downscale_factor, torch_adapter.downscale_factor,
                                 providers=["CPUExecutionProvider"])
    try:
        base = load_check_base(ref, source.family, cfg.storage,
                               local_files_only=cfg.model.local_files_only or mode != "required")
        settings = ImageSettings(resolution=min(ecfg.resolutions), steps=ecfg.pipeline_steps, seed=cfg.seed,
                                 guidance_scale=cfg.evaluate.guidance_scale, synth_cfg=cfg.data.synth)
        measured = pipeline_parity(base, torch_adapter, onnx_adapter, settings)
    except T2IError:
        raise
    except Exception as exc:  # the base model failed to load or the adapter does not fit it
        return skip_or_fail(f"the {source.family} adapter pipeline could not run on {base_id}: {type(exc).__name__}: {exc}")
    result.update(measured)
    if not measured["max_abs_pixel_difference"] <= ecfg.pipeline_tolerance:
        raise ExportCheckFailed(
            f"end-to-end check: images from ONNX and PyTorch residuals differ by up to "
            f"{measured['max_abs_pixel_difference']:.3g} (> export.pipeline_tolerance={ecfg.pipeline_tolerance}); "
            "nothing was published"
        )
    if measured["adapter_effect_max_abs"] <= ecfg.pipeline_tolerance:
        result["note"] = "the adapter barely changes the image, so this check could not tell residuals apart"
        logger.warning("end-to-end check: %s", result["note"])
    result["status"] = "passed"
    return result
