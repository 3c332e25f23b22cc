"""How well a generated image follows its condition, one registry entry per condition kind.

* ``canny`` and ``circle_outline``: ControlNet++'s protocol. kornia canny (low 0.1, high 0.2,
  5x5 kernel, sigma 1) on the generated image, binary F1 against the condition's edges. For
  ``circle_outline`` the condition image *is* the edge map, so it is binarised directly.
* ``sketch`` / ``lineart``: SSIM between the generated image's line drawing and the condition.
  With no line detector registered, a Sobel edge map stands in (a proxy, not comparable to
  ControlNet++'s numbers, and the report says so).
* ``depth`` (RMSE, 0-255 scale) and ``segmentation`` (per-image mIoU) need an estimator that the
  user registers by name (:func:`register_estimator`, or ``evaluate.estimator=module:function``).
* ``circle_iou`` (circles dataset): the generated disc, segmented by colour distance from the
  border colour, against the disc the condition outline encloses (row geometry when present,
  else the outline's flood-filled interior).

Every metric maps ``(generated uint8 [B,3,H,W], condition uint8 [B,3,H,W], metas) -> [B]``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ..errors import ModelError, UsageError

CANNY_LOW, CANNY_HIGH = 0.1, 0.2


@dataclass(frozen=True)
class FidelityMetric:
    name: str
    higher_is_better: bool
    compute: Callable[[Any, Any, list], np.ndarray]
    description: str


@dataclass(frozen=True)
class Estimator:
    """``predict(images float [B,3,H,W] in [0,1]) -> maps``; ``target(conditions uint8) -> maps``
    (optional: default is the condition's first channel, as depth / label maps usually are)."""

    predict: Callable
    target: Optional[Callable] = None


_ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(kind: str, predict: Callable, target: Optional[Callable] = None) -> None:
    """Plug in the estimator for ``depth``, ``segmentation``, ``lineart`` or ``sketch``."""
    if kind not in ("depth", "segmentation", "lineart", "sketch"):
        raise UsageError(f"no estimator slot for condition kind {kind!r}")
    _ESTIMATORS[kind] = Estimator(predict, target)


def load_estimator_spec(kind: str, spec: Optional[str]) -> None:
    """``evaluate.estimator = "package.module:function"``; the function returns an :class:`Estimator`,
    a ``(predict, target)`` pair or a bare ``predict`` callable."""
    if not spec:
        return
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise UsageError(f"evaluate.estimator {spec!r} must look like package.module:function")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"evaluate.estimator {spec!r} cannot be imported: {exc}") from None
    made = factory()
    if isinstance(made, Estimator):
        _ESTIMATORS[kind] = made
    elif isinstance(made, tuple):
        register_estimator(kind, *made)
    else:
        register_estimator(kind, made)


# ---------------------------------------------------------------------------------------
# Edges
def canny_edges(images_uint8):
    """Binary kornia canny edges ``[B,1,H,W]`` of uint8 RGB images, ControlNet++ thresholds."""
    import kornia
    import torch

    with torch.inference_mode():
        _, edges = kornia.filters.canny(images_uint8.float() / 255.0, low_threshold=CANNY_LOW, high_threshold=CANNY_HIGH)
    return edges > 0.5


def condition_edges(conditions_uint8):
    """Binarise an edge-map condition ``[B,1,H,W]``: pixels far from the condition's background
    (the median border colour), so white-on-black and black-on-white maps both work."""
    import torch

    gray = conditions_uint8.float().mean(dim=1, keepdim=True)
    border = torch.cat([gray[..., 0, :], gray[..., -1, :], gray[..., :, 0], gray[..., :, -1]], dim=-1)
    background = border.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)
    return (gray - background).abs() > 127.5


def binary_f1(pred, target) -> np.ndarray:
    """Per-image F1 of two boolean maps ``[B,...]``. Both empty counts as agreement (1)."""
    pred = pred.flatten(1)
    target = target.flatten(1)
    tp = (pred & target).sum(1).double()
    fp = (pred & ~target).sum(1).double()
    fn = (~pred & target).sum(1).double()
    denom = 2 * tp + fp + fn
    f1 = (2 * tp / denom.clamp(min=1)).where(denom > 0, 1.0)
    return f1.numpy()


def edge_f1(generated, conditions, metas=None) -> np.ndarray:
    return binary_f1(canny_edges(generated), condition_edges(conditions))


def canny_f1(generated, conditions, metas=None) -> np.ndarray:
    # A canny condition is itself an edge map: binarise it the same way.
    return binary_f1(canny_edges(generated), condition_edges(conditions))


# ---------------------------------------------------------------------------------------
# Line drawings, depth, segmentation
def _sobel_lines(images_float):
    import kornia

    mag = kornia.filters.sobel(kornia.color.rgb_to_grayscale(images_float))
    peak = mag.flatten(1).amax(1).clamp(min=1e-6).view(-1, 1, 1, 1)
    return mag / peak


def line_ssim(generated, conditions, metas=None) -> np.ndarray:
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    gen = generated.float() / 255.0
    est = _ESTIMATORS.get("lineart") or _ESTIMATORS.get("sketch")
    lines = est.predict(gen) if est else _sobel_lines(gen)
    target = conditions.float().mean(dim=1, keepdim=True) / 255.0
    with torch.inference_mode():
        ssim = structural_similarity_index_measure(lines.float(), target, data_range=1.0, reduction="none")
    return ssim.double().numpy()


def _require(kind: str) -> Estimator:
    if kind not in _ESTIMATORS:
        raise ModelError(
            f"evaluate.condition_kind={kind} needs a {kind} estimator: set evaluate.estimator=package.module:function "
            f"or call t2iops.evaluate.condition_fidelity.register_estimator({kind!r}, predict)"
        )
    return _ESTIMATORS[kind]


def _target(est: Estimator, conditions):
    return est.target(conditions) if est.target else conditions[:, :1]


def depth_rmse(generated, conditions, metas=None) -> np.ndarray:
    """RMSE on the 0-255 scale (ControlNet++'s): the estimator returns depth in [0, 1]."""
    est = _require("depth")
    pred = est.predict(generated.float() / 255.0).double() * 255.0
    target = _target(est, conditions).double()
    return ((pred - target) ** 2).flatten(1).mean(1).sqrt().numpy()


def segmentation_miou(generated, conditions, metas=None) -> np.ndarray:
    """Per-image mean IoU over the classes present in the prediction or the target."""
    est = _require("segmentation")
    pred = est.predict(generated.float() / 255.0).long().reshape(len(generated), -1).numpy()
    target = _target(est, conditions).long().reshape(len(generated), -1).numpy()
    out = []
    for p, t in zip(pred, target):
        ious = [((p == c) & (t == c)).sum() / ((p == c) | (t == c)).sum() for c in np.union1d(p, t)]
        out.append(float(np.mean(ious)))
    return np.asarray(out)


# ---------------------------------------------------------------------------------------
# Circles
def _otsu(values: np.ndarray, bins: int = 64) -> float:
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def generated_disc(image: np.ndarray, min_contrast: float = 0.1) -> np.ndarray:
    """Boolean mask of the circle in a generated ``HxWx3`` uint8 image: pixels whose colour is
    far (Otsu threshold, at least ``min_contrast``) from the median border colour."""
    from scipy import ndimage

    img = image.astype(np.float64) / 255.0
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = np.median(border, axis=0)
    dist = np.linalg.norm(img - background, axis=-1) / np.sqrt(3.0)
    mask = dist > max(_otsu(dist), min_contrast)
    return ndimage.binary_fill_holes(mask)


def condition_disc(condition: np.ndarray, meta: Optional[dict] = None, scale: float = 1.0,
                   offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The disc the outline encloses: the outline's flood-filled interior (this matches the
    rendered disc pixel for pixel), or, when the outline is not closed (no interior, e.g. after
    resizing), the row geometry ``{"cx","cy","r"}`` in original pixels (``scale`` = this size /
    original size; ``offset`` = the crop's left, top in the resized image, for a condition cut
    to a bucket of another aspect)."""
    import torch
    from scipy import ndimage

    edges = condition_edges(torch.from_numpy(np.ascontiguousarray(condition)).permute(2, 0, 1)[None])[0, 0].numpy()
    filled = ndimage.binary_fill_holes(edges)
    circle = (meta or {}).get("circle")
    if filled.sum() > edges.sum() or not circle:
        return filled
    h, w = condition.shape[:2]
    # Pixel centres of this grid in the original image's index coordinates (PIL draws the
    # disc on integer pixel centres).
    yy, xx = np.mgrid[0:h, 0:w]
    if offset != (0, 0):
        xx, yy = xx + offset[0], yy + offset[1]
    yy, xx = (yy + 0.5) / scale - 0.5, (xx + 0.5) / scale - 0.5
    cx, cy, r = (float(circle[k]) for k in ("cx", "cy", "r"))
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def circle_iou(generated, conditions, metas=None) -> np.ndarray:
    gen = generated.permute(0, 2, 3, 1).numpy()
    cond = conditions.permute(0, 2, 3, 1).numpy()
    metas = metas or [{}] * len(gen)
    out = []
    for g, c, m in zip(gen, cond, metas):
        scale = float(m.get("_scale", 1.0)) if m else 1.0
        offset = tuple(m.get("_offset", (0, 0))) if m else (0, 0)
        out.append(mask_iou(generated_disc(g), condition_disc(c, m, scale, offset)))
    return np.asarray(out)


# ---------------------------------------------------------------------------------------
# Registry
_EDGE_F1_DOC = "ControlNet++ protocol: kornia canny (0.1, 0.2) on the generated image, binary F1 vs the condition edges"
REGISTRY: dict[str, FidelityMetric] = {
    "canny": FidelityMetric("canny_f1", True, canny_f1, _EDGE_F1_DOC),
    "circle_outline": FidelityMetric("edge_f1", True, edge_f1, _EDGE_F1_DOC + " (the outline condition is the edge map)"),
    "sketch": FidelityMetric("ssim", True, line_ssim, "SSIM of the generated image's line map vs the sketch"),
    "lineart": FidelityMetric("ssim", True, line_ssim, "SSIM of the generated image's line map vs the line art"),
    "depth": FidelityMetric("depth_rmse", False, depth_rmse, "RMSE (0-255) of the estimated depth vs the depth condition"),
    "segmentation": FidelityMetric("miou", True, segmentation_miou, "per-image mIoU of the estimated segmentation vs the condition"),
}
CIRCLE_IOU = FidelityMetric("circle_iou", True, circle_iou, "IoU of the generated disc (colour segmentation) vs the disc the outline encloses")


def metrics_for(kind: str) -> list[FidelityMetric]:
    """The fidelity metrics for a condition kind, primary first. Raises naming the missing
    estimator for kinds that need one."""
    if kind not in REGISTRY:
        raise UsageError(f"evaluate.condition_kind: unknown kind {kind!r}; known: {', '.join(REGISTRY)}")
    if kind in ("depth", "segmentation"):
        _require(kind)
    metrics = [REGISTRY[kind]]
    if kind == "circle_outline":
        metrics.append(CIRCLE_IOU)
    return metrics


def notes_for(kind: str) -> list[str]:
    if kind in ("sketch", "lineart") and not (_ESTIMATORS.get("lineart") or _ESTIMATORS.get("sketch")):
        return ["line maps come from a Sobel edge proxy (no line detector registered): SSIM is not comparable to ControlNet++'s"]
    return []
