"""The serving manifest (``export.json``) and the model card (``README.md``) of an export.

``export.json`` is what a serving system reads: the graph's input contract, the residual names
and shapes per resolution (measured by running the graph), the recommended conditioning scale,
file hashes, and where the adapter came from (base model, training data version, git commit,
evaluation metrics), so a served adapter can be traced back to the run that made it.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Optional

import yaml

from .. import storage
from ..models.generator import ADAPTER_GENERATORS

SCHEMA_VERSION = 1


def data_version(source, cfg: Any, cwd: Optional[Path] = None) -> dict:
    """What the adapter was trained on. ``dvc_md5``: the DVC hash of the training data root
    from ``dvc.lock`` in ``cwd``, or from ``<root>.dvc`` (null with ``dvc_reason`` otherwise). ``dataset_version``: the
    training summary's digest of the validated rows its cache was encoded from, when recorded."""
    training = source.training_config or {}
    root = ((training.get("data") or {}).get("root")) or cfg.data.root
    record: dict[str, Any] = {"path": root, "dvc_md5": None}
    lock = Path(cwd or Path.cwd()) / "dvc.lock"
    if lock.is_file():
        try:
            stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
            record["dvc_reason"] = f"dvc.lock has no entry for the data root {root!r}"
        except yaml.YAMLError as exc:
            stages = {}
            record["dvc_reason"] = f"dvc.lock is not valid YAML ({exc})"
        wanted = _norm(root)
        for stage_name, stage in stages.items():
            for entry in (stage.get("outs") or []) + (stage.get("deps") or []):
                if _norm(entry.get("path", "")) == wanted and entry.get("md5"):
                    record.pop("dvc_reason", None)
                    record.update(dvc_md5=entry["md5"], dvc_stage=stage_name)
                    break
            if record["dvc_md5"]:
                break
    else:
        record["dvc_reason"] = f"no dvc.lock in {lock.parent}"
    pointer = lock.parent / f"{_norm(root)}.dvc"  # data tracked with `dvc add` instead of a stage
    if not record["dvc_md5"] and pointer.is_file():
        try:
            outs = (yaml.safe_load(pointer.read_text()) or {}).get("outs") or []
        except yaml.YAMLError:
            outs = []
        if outs and outs[0].get("md5"):
            record.pop("dvc_reason", None)
            record.update(dvc_md5=outs[0]["md5"], dvc_file=pointer.name)
    summary = source.training_summary or {}
    if summary.get("data_version"):
        record["dataset_version"] = summary["data_version"]
        record["dataset_version_source"] = "training summary.json (digest of the validated rows the cache was encoded from)"
    else:
        record["dataset_version"] = None
        record["dataset_version_reason"] = (
            "the adapter folder is not a training output" if source.run_dir is None
            else "the training summary records no data_version"
        )
    return record


def pipeline_provenance(record: dict, git_sha: str, pulled: dict) -> dict:
    """In a pipeline step there is no checkout: the code is the run's ``git_sha`` parameter and
    the data is what the pull step recorded (source; repository, revision and commit for DVC),
    not whatever the step's working directory happens to hold."""
    data = {k: v for k, v in record["training_data"].items() if not k.startswith("dvc_")}
    data.update(dvc_md5=None, pulled=pulled)
    if pulled.get("source") != "dvc":
        data["dvc_reason"] = f"the pipeline pulled the data from {pulled.get('source') or 'an unrecorded source'}, not DVC"
    else:
        data["dvc_reason"] = "DVC-tracked: repository, revision and commit under `pulled`"
    git = ({"commit": git_sha, "source": "the pipeline run's git_sha parameter"} if git_sha
           else {"commit": None, "reason": "the pipeline run was given no git_sha"})
    return {**record, "training_data": data, "git": git}


def git_commit(cwd: Optional[Path] = None) -> dict:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": None, "reason": f"git is not available ({exc})"}
    if head.returncode != 0:
        return {"commit": None, "reason": "the working directory is not a git repository"}
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True,
        timeout=60, check=False,
    )
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def read_metrics(metrics_uri: Optional[str], cfg: Any) -> Optional[dict]:
    from ..errors import DataError

    if not metrics_uri:
        return None
    try:
        data = json.loads(storage.read_text(metrics_uri, cfg))
    except FileNotFoundError:
        raise DataError(f"metrics file {metrics_uri} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"metrics file {metrics_uri} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"metrics file {metrics_uri} must hold a JSON object")
    return data


def file_record(path: Path, root: Path) -> dict:
    return {"path": str(path.relative_to(root)), "bytes": path.stat().st_size, "sha256": storage.sha256_file(path)}


def _norm(path: str) -> str:
    path = str(path).strip()
    while path.startswith("./"):
        path = path[2:]
    return path.rstrip("/")


# ---------------------------------------------------------------------------------------
def write_manifest(staging: Path, manifest: dict) -> Path:
    path = staging / "export.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def model_card(manifest: dict) -> str:
    """README.md: what the files are, how to load the adapter and how to feed the residuals.

    Long: one Markdown template, kept whole so that it reads like the page it writes."""
    family = manifest["family"]
    adapter = manifest["adapter"]
    usage = manifest["usage"]
    multiple = adapter["total_downscale_factor"]
    base = manifest["base_model"]
    pipe_cls = ADAPTER_GENERATORS[family]
    res = next(iter(manifest["residual_shapes"]))
    shapes = "\n".join(f"| `{name}` | `{shape}` |" for name, shape in manifest["residual_shapes"][res].items())
    parity = manifest["validation"]
    pipeline = parity["pipeline"]
    pipeline_line = (
        f"max pixel difference {pipeline['max_abs_pixel_difference']:.2e} over {pipeline['steps']} steps "
        f"(tolerance {pipeline['tolerance']:.0e})" if pipeline.get("status") == "passed"
        else f"{pipeline.get('status')}: {pipeline.get('reason', '')}"
    )
    fp16_row = (
        "| `adapter_fp16.onnx` | fp16 weights and arithmetic, **fp32 input and outputs** (Cast nodes at the edges) |\n"
        if "onnx_fp16" in manifest["files"] else ""
    )
    factor_kw = f", adapter_conditioning_factor={usage['adapter_conditioning_factor']}" if family == "sdxl" else ""
    data = manifest["training_data"]
    git = manifest["git"]
    return f"""# T2I-Adapter ({adapter['type']}, {family})

Exported by t2iops {manifest['t2iops_version']} from `{adapter['source']}`.
Base model: `{base['id']}` (revision {base.get('revision') or 'default'}).
Training data: `{data['path']}`, DVC md5 {f"`{data['dvc_md5']}`" if data.get('dvc_md5') else 'not recorded (' + data.get('dvc_reason', '') + ')'}, dataset version {f"`{data['dataset_version']}`" if data.get('dataset_version') else 'not recorded'}.
Code: {f"git `{git['commit']}`" + (' (uncommitted changes)' if git.get('dirty') else '') if git.get('commit') else 'not recorded'}.

| file | what |
| --- | --- |
| `adapter/` | the diffusers `T2IAdapter` (config + safetensors weights) |
| `adapter.onnx` | ONNX graph, fp32 weights, opset {manifest['opset']} |
{fp16_row}| `export.json` | serving manifest: shapes, hashes, checks, TensorRT profiles |

## Input

`condition`: float32 `[batch, 3, height, width]`, RGB, NCHW, values in [0, 1] (pixel / 255, no
mean/std normalisation). Height and width must be multiples of **{multiple}** (the adapter's total
downscale factor); batch is dynamic. With classifier-free guidance the adapter still runs once
per image: the UNet's batch is doubled, the adapter's is not.

## Outputs (at {res}x{res}, batch 1)

| name | shape |
| --- | --- |
{shapes}

They are the UNet's `down_intrablock_additional_residuals`, in this order.

## Use with diffusers (PyTorch)

```python
from diffusers import T2IAdapter, {pipe_cls}
adapter = T2IAdapter.from_pretrained("path/to/export/adapter")
pipe = {pipe_cls}.from_pretrained("{base['id']}", adapter=adapter)
image = pipe(prompt, image=condition_image, adapter_conditioning_scale={usage['adapter_conditioning_scale']}{factor_kw}).images[0]
```

## Use the ONNX graph in the same pipeline

```python
from t2iops.export.ort_adapter import OrtT2IAdapter
adapter = OrtT2IAdapter.from_export("path/to/export")  # CUDAExecutionProvider when onnxruntime-gpu has it
pipe = {pipe_cls}.from_pretrained("{base['id']}", adapter=adapter)
```

## Feed the ONNX outputs to a UNet yourself

```python
import onnxruntime as ort, torch
session = ort.InferenceSession("adapter.onnx")
residuals = [torch.from_numpy(r) * {usage['adapter_conditioning_scale']} for r in session.run(None, {{"condition": condition}})]
if do_classifier_free_guidance:  # UNet batch is [uncond, cond]
    residuals = [torch.cat([r, r]) for r in residuals]
for t in timesteps:
    # the UNet pops from the list: give it a fresh copy every step
    noise = unet(latents_in, t, encoder_hidden_states=embeds,
                 down_intrablock_additional_residuals=[r.clone() for r in residuals]).sample
```
{"For SDXL, `adapter_conditioning_factor` is the fraction of steps (from the start) that receive the residuals." if family == "sdxl" else ""}

## Checks run at export

- onnxruntime vs PyTorch, random and circle-outline conditions, {len(parity['parity'])} cases: worst relative
  error fp32 {parity['fp32_max_relative_error']:.2e} (tolerance {parity['fp32_tolerance']:.0e}){f", fp16 {parity['fp16_max_relative_error']:.2e} (tolerance {parity['fp16_tolerance']:.0e})" if parity.get('fp16_max_relative_error') is not None else ""}.
- End-to-end pipeline, ONNX vs PyTorch residuals, same seed: {pipeline_line}.
- TensorRT 10 operator audit: {"ready" if manifest['tensorrt']['audit']['fp32']['ready'] else "problems found (see export.json)"}; engine build: {manifest['tensorrt']['engine_check']['status']}. Build an engine with:

```
{manifest['tensorrt']['profiles'][0]['trtexec']}
```
"""
