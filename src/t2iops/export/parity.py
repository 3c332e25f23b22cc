"""The export's validation gate: does the ONNX graph compute what the PyTorch adapter computes?

Errors are measured relative to the output's scale: ``max|onnx - torch| / max|torch|`` per
residual, the worst residual counting. Conditions are both random noise (every pixel value)
and a real condition (a synthetic circle outline: mostly zeros with thin lines, the inputs the
adapter is trained on), at several batch sizes and resolutions, so a wrong dynamic axis or a
scrambled pixel-unshuffle cannot hide.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class ParityCase:
    model: str  # "fp32" | "fp16"
    condition: str  # "random" | "circle"
    batch: int
    height: int
    width: int
    max_abs_error: float
    output_scale: float
    relative_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.relative_error)) and self.relative_error <= self.tolerance

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def parity_shapes(resolutions: list[int], max_batch: int, multiple: int) -> list[tuple[int, int, int]]:
    """(batch, height, width) cases: each profile resolution at batch 1, and the smallest one
    at batch min(2, max_batch) with a wider width, so batch and both spatial axes vary."""
    sizes = sorted(set(resolutions))
    cases = [(1, r, r) for r in sizes]
    cases.append((min(2, max_batch), sizes[0], sizes[0] + multiple))
    return cases


def bucket_parity_shapes(buckets: list[tuple[int, int]], existing: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """(1, height, width) cases for the training buckets a server will be asked for: the most
    square one, the widest and the tallest (``buckets`` lists square first), leaving out any
    ``existing`` already checks at batch 1."""
    if not buckets:
        return []
    wanted = [buckets[0], max(buckets, key=lambda b: b[1] / b[0]), min(buckets, key=lambda b: b[1] / b[0])]
    cases: list[tuple[int, int, int]] = []
    for height, width in wanted:
        case = (1, height, width)
        if case not in existing and case not in cases:
            cases.append(case)
    return cases


def circle_condition(height: int, width: int, seed: int, synth_cfg: Any = None) -> np.ndarray:
    """A real-looking condition [3, H, W] in [0, 1]: a circle outline, white on black.

    Uses the synthetic dataset's renderer when it is installed, so parity is checked on the
    very inputs training used; else draws the same kind of outline with PIL."""
    from PIL import Image, ImageDraw

    side = max(height, width)
    image = None
    try:
        from t2iops.data.synth import render_sample
    except ImportError:
        render_sample = None
    if render_sample is not None and synth_cfg is not None:
        _, image, _ = render_sample(np.random.default_rng(seed), side, synth_cfg)
        image = image.convert("RGB")
    if image is None:
        rng = np.random.default_rng(seed)
        image = Image.new("RGB", (side, side), (0, 0, 0))
        radius = rng.uniform(0.15, 0.35) * side
        cx, cy = rng.uniform(radius, side - radius, size=2)
        ImageDraw.Draw(image).ellipse(
            [cx - radius, cy - radius, cx + radius, cy + radius], outline=(255, 255, 255), width=max(1, side // 32)
        )
    if image.size != (width, height):
        image = image.resize((width, height))
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0


def make_conditions(kind: str, batch: int, height: int, width: int, seed: int, synth_cfg: Any = None) -> np.ndarray:
    if kind == "random":
        return np.random.default_rng(seed).random((batch, 3, height, width), dtype=np.float32)
    return np.stack([circle_condition(height, width, seed + i, synth_cfg) for i in range(batch)])


def relative_error(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[float, float, float]:
    """(max abs error, output scale, relative error) over all residuals, the worst counting."""
    worst = (0.0, 0.0, 0.0)
    for ref, got in zip(reference, candidate, strict=True):
        if ref.shape != got.shape:
            return (float("inf"), 0.0, float("inf"))
        err = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64))))
        scale = float(np.max(np.abs(ref)))
        rel = err / max(scale, 1e-12)
        if not np.isfinite(rel) or rel > worst[2]:
            worst = (err, scale, rel)
    return worst


def check_parity(
    adapter,
    sessions: dict[str, Any],
    tolerances: dict[str, float],
    shapes: list[tuple[int, int, int]],
    seed: int = 0,
    synth_cfg: Any = None,
) -> list[ParityCase]:
    """Run every ``(batch, height, width)`` in ``shapes`` through the PyTorch adapter and each
    onnxruntime session (``{"fp32": session, "fp16": session}``), on random and circle inputs."""
    import torch
    from ..progress import progress

    cases = []
    for batch, height, width in progress(shapes, desc="parity", unit="shape"):
        for kind in ("random", "circle"):
            x = make_conditions(kind, batch, height, width, seed, synth_cfg)
            with torch.no_grad():
                reference = [r.numpy() for r in adapter(torch.from_numpy(x))]
            for name, session in sessions.items():
                outputs = session.run(None, {session.get_inputs()[0].name: x})
                err, scale, rel = relative_error(reference, outputs)
                case = ParityCase(name, kind, batch, height, width, err, scale, rel, tolerances[name])
                logger.info(
                    "parity %s %s %dx3x%dx%d: max abs %.3g, relative %.3g (tolerance %.3g)",
                    name, kind, batch, height, width, err, rel, tolerances[name],
                )
                cases.append(case)
    return cases


# ---------------------------------------------------------------------------------------
# End to end: the same generator, same seed, PyTorch residuals vs onnxruntime residuals.
@dataclass(frozen=True)
class ImageSettings:
    """The one image the end-to-end check generates with each adapter. Its condition is a circle
    outline drawn from ``seed`` (with ``synth_cfg``, the synthetic dataset's own renderer)."""

    resolution: int
    steps: int = 2
    seed: int = 0
    prompt: str = "red circle with blue background"
    guidance_scale: float = 5.0
    synth_cfg: Any = None


def load_check_base(base_model: Any, family: str, storage_cfg: Any = None, local_files_only: bool = True):
    """The base model the end-to-end check generates with. ``base_model``: the training run's
    :class:`~t2iops.models.reference.BaseModelRef` (or a folder), loaded through the one loader
    in fp32 (the check runs on the CPU); a base model of another family than the adapter's is
    refused."""
    import torch

    from ..errors import ModelError
    from ..models.reference import BaseModelRef
    from ..models.resolve import load_base_model

    ref = base_model if isinstance(base_model, BaseModelRef) else BaseModelRef(path=str(base_model))
    base = load_base_model(ref, storage_cfg, dtype=torch.float32, local_files_only=local_files_only,
                           components=("unet", "vae", "text_encoders", "scheduler"))
    if base.family != family:
        raise ModelError(f"the adapter is for {family} but the base model {ref.path} is {base.family}")
    return base


def pipeline_parity(base: Any, torch_adapter, onnx_adapter, settings: ImageSettings) -> dict:
    """Generate one image with each adapter and return the max abs pixel difference ([0, 1]
    scale). Both runs share the scheduler state, the seed, the prompt and the condition.
    ``base``: from :func:`load_check_base`."""
    import torch
    from PIL import Image

    resolution, steps, seed = settings.resolution, settings.steps, settings.seed
    guidance_scale = settings.guidance_scale
    pipe = base.generator(torch_adapter)
    condition = circle_condition(resolution, resolution, seed, settings.synth_cfg)
    image = Image.fromarray((condition.transpose(1, 2, 0) * 255).round().astype(np.uint8))

    def generate(scale: float = 1.0) -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(seed)
        result = pipe(
            prompt=settings.prompt,
            image=image,
            height=resolution,
            width=resolution,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            adapter_conditioning_scale=scale,
            generator=generator,
            output_type="np",
        )
        return np.asarray(result.images, dtype=np.float64)

    reference = generate()
    # The residuals' own effect on the image: a parity margin far below it means the check
    # can see a wrong residual (were the adapter ignored, both images would trivially agree).
    without_adapter = generate(scale=0.0)
    pipe.adapter = onnx_adapter  # same generator object: identical components and scheduler config
    candidate = generate()
    pipe.adapter = torch_adapter
    return {
        "max_abs_pixel_difference": float(np.max(np.abs(reference - candidate))),
        "mean_abs_pixel_difference": float(np.mean(np.abs(reference - candidate))),
        "adapter_effect_max_abs": float(np.max(np.abs(reference - without_adapter))),
        "image_shape": list(reference.shape),
        "steps": steps,
        "seed": seed,
        "guidance_scale": guidance_scale,
        "resolution": resolution,
    }
