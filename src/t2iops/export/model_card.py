"""The model card (``README.md``) of an export, written from its serving spec (``export.json``).

The card is for a person: what the files are, where the adapter came from, how to load it with
diffusers, how to feed the ONNX residuals to a UNet by hand, and which checks it passed. Each
section is one function below, in the order the page shows them.
"""
from __future__ import annotations

from ..models.generator import ADAPTER_GENERATORS


def model_card(spec: dict) -> str:
    """README.md: what the files are, how to load the adapter and how to feed the residuals."""
    sections = [_provenance(spec), _files(spec), _input(spec), _outputs(spec), _use_with_diffusers(spec),
                _use_by_hand(spec), _checks(spec)]
    return "\n".join(sections)


def _provenance(spec: dict) -> str:
    adapter, base, data, git = spec["adapter"], spec["base_model"], spec["training_data"], spec["git"]
    dvc = f"`{data['dvc_md5']}`" if data.get("dvc_md5") else "not recorded (" + data.get("dvc_reason", "") + ")"
    version = f"`{data['dataset_version']}`" if data.get("dataset_version") else "not recorded"
    code = "not recorded"
    if git.get("commit"):
        code = f"git `{git['commit']}`" + (" (uncommitted changes)" if git.get("dirty") else "")
    return f"""# T2I-Adapter ({adapter['type']}, {spec['family']})

Exported by t2iops {spec['t2iops_version']} from `{adapter['source']}`.
Base model: `{base['id']}` (revision {base.get('revision') or 'default'}).
Training data: `{data['path']}`, DVC md5 {dvc}, dataset version {version}.
Code: {code}.
"""


def _files(spec: dict) -> str:
    fp16_row = (
        "| `adapter_fp16.onnx` | fp16 weights and arithmetic, **fp32 input and outputs** (Cast nodes at the edges) |\n"
        if "onnx_fp16" in spec["files"] else ""
    )
    return f"""| file | what |
| --- | --- |
| `adapter/` | the diffusers `T2IAdapter` (config + safetensors weights) |
| `adapter.onnx` | ONNX graph, fp32 weights, opset {spec['opset']} |
{fp16_row}| `export.json` | serving spec: shapes, hashes, checks, TensorRT profiles |
"""


def _input(spec: dict) -> str:
    multiple = spec["adapter"]["total_downscale_factor"]
    return f"""## Input

`condition`: float32 `[batch, 3, height, width]`, RGB, NCHW, values in [0, 1] (pixel / 255, no
mean/std normalisation). Height and width must be multiples of **{multiple}** (the adapter's total
downscale factor); batch is dynamic. With classifier-free guidance the adapter still runs once
per image: the UNet's batch is doubled, the adapter's is not.
{_buckets(spec)}"""


def _buckets(spec: dict) -> str:
    """The training buckets, when there were several: the sizes to generate at (a single square
    bucket is what the resolutions above already say)."""
    sizes = (spec.get("buckets") or {}).get("sizes") or []
    if len(sizes) < 2:
        return ""
    listed = ", ".join(f"{h}x{w}" for h, w in sizes)
    return f"""
Trained at these aspect-ratio buckets (height x width): {listed}. Generate at one of them (the
one nearest the condition's aspect ratio, the condition resized to cover it and centre-cropped);
the TensorRT profiles in `export.json` cover them all.
"""


def _outputs(spec: dict) -> str:
    res = next(iter(spec["residual_shapes"]))
    shapes = "\n".join(f"| `{name}` | `{shape}` |" for name, shape in spec["residual_shapes"][res].items())
    return f"""## Outputs (at {res}x{res}, batch 1)

| name | shape |
| --- | --- |
{shapes}

They are the UNet's `down_intrablock_additional_residuals`, in this order.
"""


def _use_with_diffusers(spec: dict) -> str:
    family, usage, base = spec["family"], spec["usage"], spec["base_model"]
    pipe_cls = ADAPTER_GENERATORS[family]
    factor_kw = f", adapter_conditioning_factor={usage['adapter_conditioning_factor']}" if family == "sdxl" else ""
    return f"""## Use with diffusers (PyTorch)

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
"""


def _use_by_hand(spec: dict) -> str:
    sdxl_note = ("For SDXL, `adapter_conditioning_factor` is the fraction of steps (from the start) that "
                 "receive the residuals." if spec["family"] == "sdxl" else "")
    return f"""## Feed the ONNX outputs to a UNet yourself

```python
import onnxruntime as ort, torch
session = ort.InferenceSession("adapter.onnx")
residuals = [torch.from_numpy(r) * {spec['usage']['adapter_conditioning_scale']} for r in session.run(None, {{"condition": condition}})]
if do_classifier_free_guidance:  # UNet batch is [uncond, cond]
    residuals = [torch.cat([r, r]) for r in residuals]
for t in timesteps:
    # the UNet pops from the list: give it a fresh copy every step
    noise = unet(latents_in, t, encoder_hidden_states=embeds,
                 down_intrablock_additional_residuals=[r.clone() for r in residuals]).sample
```
{sdxl_note}
"""


def _checks(spec: dict) -> str:
    validation, tensorrt = spec["validation"], spec["tensorrt"]
    fp16 = ""
    if validation.get("fp16_max_relative_error") is not None:
        fp16 = (f", fp16 {validation['fp16_max_relative_error']:.2e} "
                f"(tolerance {validation['fp16_tolerance']:.0e})")
    audit = "ready" if tensorrt["audit"]["fp32"]["ready"] else "problems found (see export.json)"
    return f"""## Checks run at export

- onnxruntime vs PyTorch, random and circle-outline conditions, {len(validation['parity'])} cases: worst relative
  error fp32 {validation['fp32_max_relative_error']:.2e} (tolerance {validation['fp32_tolerance']:.0e}){fp16}.
- End-to-end pipeline, ONNX vs PyTorch residuals, same seed: {_pipeline_line(validation['pipeline'])}.
- TensorRT 10 operator audit: {audit}; engine build: {tensorrt['engine_check']['status']}. Build an engine with:

```
{tensorrt['profiles'][0]['trtexec']}
```
"""


def _pipeline_line(pipeline: dict) -> str:
    if pipeline.get("status") == "passed":
        return (f"max pixel difference {pipeline['max_abs_pixel_difference']:.2e} over {pipeline['steps']} steps "
                f"(tolerance {pipeline['tolerance']:.0e})")
    return f"{pipeline.get('status')}: {pipeline.get('reason', '')}"
