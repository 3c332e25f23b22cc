"""Condition-fidelity metrics: ControlNet++ edge F1, circle IoU, SSIM, estimator registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from t2iops.config import Config
from t2iops.data.synth import render_sample, sample_rng
from t2iops.errors import ModelError, UsageError
from t2iops.evaluate import condition_fidelity as cf


def as_batch(*images) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]).contiguous()


def circle_sample(index: int):
    image, condition, meta = render_sample(sample_rng(0, index), 64, Config().data.synth)
    return np.asarray(image), np.asarray(condition), meta


def luminance(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def contrasted_samples(n: int = 3):
    """Samples whose circle and background differ in grey level (canny sees grey levels only)."""
    from t2iops.data.synth import PALETTE

    out = []
    for i in range(50):
        image, condition, meta = circle_sample(i)
        if abs(luminance(PALETTE[meta["color"]]) - luminance(PALETTE[meta["background"]])) > 40:
            out.append((image, condition, meta))
        if len(out) == n:
            return out
    raise AssertionError("no contrasted samples")


def test_edge_map_against_itself_is_exactly_one():
    _, condition, _ = circle_sample(0)
    edges = cf.condition_edges(as_batch(condition))
    assert edges.sum() > 0
    assert cf.binary_f1(edges, edges).tolist() == [1.0]


def test_canny_f1_of_an_image_against_its_own_canny_map_is_one():
    # The canny condition kind: the condition is kornia canny (0.1, 0.2) of the image itself.
    image, _, _ = contrasted_samples(1)[0]
    batch = as_batch(image)
    own_edges = cf.canny_edges(batch)[0, 0].numpy()
    condition = np.repeat((own_edges * 255).astype(np.uint8)[..., None], 3, axis=-1)
    assert cf.canny_f1(batch, as_batch(condition)).tolist() == [1.0]


def test_blank_image_scores_zero():
    _, condition, _ = circle_sample(0)
    blank = np.full_like(condition, 128)
    assert cf.edge_f1(as_batch(blank), as_batch(condition)).tolist() == [0.0]


def test_rendered_circle_follows_its_outline_and_not_another():
    samples = contrasted_samples(3)
    images = as_batch(*[s[0] for s in samples])
    outlines = as_batch(*[s[1] for s in samples])
    own = cf.edge_f1(images, outlines)
    # Canny's 1-px edges against the 2-px ring: recall is about half, precision high.
    assert (own > 0.4).all(), own
    shuffled = cf.edge_f1(images, outlines[[1, 2, 0]])
    assert (own > shuffled + 0.2).all(), (own, shuffled)


def test_circle_iou_of_the_rendered_image_is_near_one_and_wrong_geometry_is_low():
    image, condition, meta = circle_sample(1)
    assert cf.circle_iou(as_batch(image), as_batch(condition), [meta]).item() > 0.95
    assert cf.circle_iou(as_batch(image), as_batch(condition), [{}]).item() > 0.95
    # The same colours with the disc drawn elsewhere (apart from the condition's): no overlap.
    from PIL import Image, ImageDraw

    c = meta["circle"]
    elsewhere = Image.fromarray(image[:1, :1]).resize((64, 64))  # background colour only
    ox, oy = (64 - c["cx"], 64 - c["cy"]) if abs(c["cx"] - 32) + abs(c["cy"] - 32) > 8 else (8, 8)
    ImageDraw.Draw(elsewhere).ellipse((ox - 6, oy - 6, ox + 6, oy + 6), fill=tuple(int(v) for v in image[c["cy"], c["cx"]]))
    iou = cf.circle_iou(as_batch(elsewhere), as_batch(condition), [meta]).item()
    assert iou < 0.1, iou


def test_condition_disc_falls_back_to_row_geometry_when_the_outline_is_open():
    _, condition, meta = circle_sample(1)
    broken = condition.copy()
    cx, cy, r = (meta["circle"][k] for k in ("cx", "cy", "r"))
    broken[:, cx - 2:cx + 3] = 0  # cut the ring top and bottom: nothing left to fill
    disc = cf.condition_disc(broken, meta, 1.0)
    expected_area = np.pi * r**2
    assert abs(disc.sum() - expected_area) / expected_area < 0.1
    # Row geometry at another resolution: the disc scales with the image.
    big = cf.condition_disc(np.zeros((128, 128, 3), np.uint8), meta, 2.0)
    assert abs(big.sum() - 4 * expected_area) / (4 * expected_area) < 0.05


def test_condition_disc_geometry_follows_a_bucket_crop():
    """A 128x64 row cropped to a 48x48 square: scale 0.75, the crop starts 24 px into the resized
    row, so a disc drawn at x=80 lands at 80 * 0.75 - 24 = 36."""
    meta = {"circle": {"cx": 80, "cy": 32, "r": 16}}
    disc = cf.condition_disc(np.zeros((48, 48, 3), np.uint8), meta, 0.75, offset=(24, 0))
    ys, xs = np.nonzero(disc)
    assert abs(xs.mean() - 36) < 0.6 and abs(ys.mean() - 24) < 0.6
    assert abs(disc.sum() - np.pi * 12**2) / (np.pi * 12**2) < 0.05


def test_generated_disc_of_a_flat_image_is_empty():
    flat = np.full((32, 32, 3), 90, np.uint8)
    assert cf.generated_disc(flat).sum() == 0


def test_registry_primary_metric_first_and_circle_iou_for_circles():
    names = [m.name for m in cf.metrics_for("circle_outline")]
    assert names == ["edge_f1", "circle_iou"]
    assert [m.name for m in cf.metrics_for("canny")] == ["canny_f1"]
    with pytest.raises(UsageError, match="unknown kind"):
        cf.metrics_for("normals")


def test_depth_and_segmentation_need_an_estimator(monkeypatch):
    monkeypatch.setattr(cf, "_ESTIMATORS", {})
    with pytest.raises(ModelError, match="needs a depth estimator.*evaluate.estimator"):
        cf.metrics_for("depth")
    with pytest.raises(ModelError, match="needs a segmentation estimator"):
        cf.metrics_for("segmentation")


def test_registered_depth_estimator_rmse(monkeypatch):
    monkeypatch.setattr(cf, "_ESTIMATORS", {})
    generated = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    # A "depth estimator" returning the grey level: RMSE 0 against the generated grey map.
    cf.register_estimator("depth", lambda x: x.mean(dim=1, keepdim=True))
    target = generated.float().mean(dim=1, keepdim=True).round().to(torch.uint8).repeat(1, 3, 1, 1)
    rmse = cf.depth_rmse(generated, target)
    assert rmse.shape == (2,) and (rmse < 0.6).all()  # rounding only
    off = cf.depth_rmse(generated, torch.zeros_like(target))
    assert (off > 50).all()
    assert cf.metrics_for("depth")[0].higher_is_better is False


def test_registered_segmentation_miou(monkeypatch):
    monkeypatch.setattr(cf, "_ESTIMATORS", {})
    labels = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    labels[:, :, :, 4:] = 1
    cf.register_estimator("segmentation", lambda x: (x[:, :1] > 0.5).long())
    generated = (labels * 255).to(torch.uint8)
    assert cf.segmentation_miou(generated, labels).tolist() == [1.0]
    half_wrong = torch.zeros_like(generated)
    assert cf.segmentation_miou(half_wrong, labels).tolist() == [0.25]  # class 0: 32/64, class 1: 0


def test_line_ssim_with_a_registered_detector(monkeypatch):
    monkeypatch.setattr(cf, "_ESTIMATORS", {})
    _, condition, _ = circle_sample(0)
    cond = as_batch(condition)
    # A "line detector" that returns the line art itself: SSIM 1.
    cf.register_estimator("lineart", lambda x: x.mean(dim=1, keepdim=True))
    assert cf.line_ssim(cond, cond).item() == pytest.approx(1.0, abs=1e-6)
    assert cf.notes_for("lineart") == []
    monkeypatch.setattr(cf, "_ESTIMATORS", {})
    proxy = cf.line_ssim(cond, cond)
    assert proxy.shape == (1,) and -1 <= proxy.item() <= 1
    assert "proxy" in cf.notes_for("lineart")[0]


def test_estimator_spec_imports_module_function(monkeypatch, tmp_path):
    monkeypatch.setattr(cf, "_ESTIMATORS", {})
    with pytest.raises(UsageError, match="must look like"):
        cf.load_estimator_spec("depth", "no_colon")
    with pytest.raises(UsageError, match="cannot be imported"):
        cf.load_estimator_spec("depth", "t2iops.nowhere:make")
    (tmp_path / "my_depth.py").write_text("def make():\n    return lambda images: images.mean(dim=1, keepdim=True)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cf.load_estimator_spec("depth", "my_depth:make")
    assert cf.metrics_for("depth")[0].name == "depth_rmse"
    generated = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    assert cf.depth_rmse(generated, generated).tolist() == [0.0]
