"""Shared geometry of image and condition: crops, flips and SDXL time ids per sample."""
import numpy as np
import pytest
from PIL import Image

from t2iops.encode.augment import apply_crop, plan_crop, prepare_pair, sample_seed


def _gradient(w, h):
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def test_center_crop_of_a_landscape_image_records_its_geometry():
    plan = plan_crop(width=96, height=48, target=32, random_crop=False, seed=0)
    assert plan.original_size == (48, 96)
    assert plan.resized_size == (32, 64)
    assert (plan.top, plan.left) == (0, 16)
    assert plan.time_ids() == [48, 96, 0, 16, 32, 32]
    # Mirroring the image mirrors the crop window inside the resized image.
    assert plan.time_ids(flipped=True) == [48, 96, 0, 64 - 16 - 32, 32, 32]


def test_random_crop_is_fixed_per_seed_and_varies_across_samples():
    plans = {plan_crop(200, 100, 64, True, sample_seed(0, f"id{i}")).left for i in range(20)}
    assert len(plans) > 5  # crops differ between samples
    a = plan_crop(200, 100, 64, True, sample_seed(0, "x"))
    b = plan_crop(200, 100, 64, True, sample_seed(0, "x"))
    assert a == b
    assert 0 <= a.left <= 128 - 64 and a.top == 0


def test_image_and_condition_get_identical_geometry():
    image = _gradient(90, 60)
    img, cond, plan = prepare_pair(image, image.copy(), 32, random_crop=True, seed=7)
    assert img.size == cond.size == (32, 32)
    assert np.array_equal(np.asarray(img), np.asarray(cond))
    # A condition stored at another size is brought to the image's size first.
    small = image.resize((45, 30), Image.BILINEAR)
    _, cond2, plan2 = prepare_pair(image, small, 32, random_crop=True, seed=7)
    assert plan2 == plan
    assert np.abs(np.asarray(cond2, dtype=int) - np.asarray(img, dtype=int)).mean() < 8


def test_flipped_crop_equals_crop_of_the_flipped_image():
    image = _gradient(80, 40)
    plan = plan_crop(80, 40, 32, random_crop=True, seed=3)
    top, left = plan.time_ids(flipped=True)[2:4]
    resized_flipped = image.transpose(Image.FLIP_LEFT_RIGHT).resize((plan.resized_size[1], plan.resized_size[0]), Image.BILINEAR)
    crop_of_flipped = resized_flipped.crop((left, top, left + 32, top + 32))
    flipped_crop = apply_crop(image, plan).transpose(Image.FLIP_LEFT_RIGHT)
    assert np.abs(np.asarray(crop_of_flipped, dtype=int) - np.asarray(flipped_crop, dtype=int)).max() <= 1


def test_crop_plan_refuses_an_image_of_another_size():
    plan = plan_crop(64, 64, 32, False, 0)
    with pytest.raises(ValueError, match="crop plan"):
        apply_crop(_gradient(65, 64), plan)


def test_a_bucket_is_covered_by_the_smallest_resize_then_cropped_to_exactly_its_shape():
    plan = plan_crop(150, 100, (32, 64), random_crop=False, seed=0)  # 3:2 image into a 1:2 bucket
    assert plan.resized_size == (43, 64)  # width decides: 64 / 150, height 42.7 -> 43
    assert (plan.top, plan.left) == (6, 0) and plan.target_size == (32, 64)
    assert plan.time_ids() == [100, 150, 6, 0, 32, 64]  # true original size, crop corner, bucket (h, w)
    assert plan.time_ids(flipped=True) == [100, 150, 6, 0, 32, 64]  # the width is not cropped
    tall = plan_crop(100, 150, (64, 32), random_crop=True, seed=5)
    assert tall.resized_size == (64, 43) and tall.top == 0 and 0 <= tall.left <= 11
    assert tall.time_ids(flipped=True)[3] == 43 - tall.left - 32
    image = _gradient(150, 100)
    assert apply_crop(image, plan).size == (64, 32)  # PIL sizes are (width, height)
    # A square bucket given as (h, w) is the same plan as the square side given as an int.
    assert plan_crop(150, 100, (48, 48), True, 9) == plan_crop(150, 100, 48, True, 9)


def _circles_and_outlines(width, height):
    """A grid of discs (so every crop holds several) and their outlines, drawn from the same boxes."""
    from PIL import ImageDraw

    image = Image.new("RGB", (width, height), (30, 60, 210))
    outline = Image.new("L", (width, height), 0)
    for cy in range(15, height - 10, 30):
        for cx in range(15, width - 10, 30):
            box = (cx - 11, cy - 11, cx + 11, cy + 11)
            ImageDraw.Draw(image).ellipse(box, fill=(250, 130, 10))
            ImageDraw.Draw(outline).ellipse(box, outline=255, width=3)
    return image, outline.convert("RGB")


def _whole(mask):
    """``mask`` without the shapes the crop cut (those touching the border)."""
    from scipy.ndimage import label

    labels, _ = label(mask)
    cut = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    return mask & ~np.isin(labels, list(cut - {0}))


def _discs(cropped):
    """Pixels of the cropped image nearer the circles' colour than the background's (whole discs)."""
    a = np.asarray(cropped, dtype=int)
    return _whole(np.abs(a - (250, 130, 10)).sum(-1) < np.abs(a - (30, 60, 210)).sum(-1))


def _filled(condition, threshold):
    """The discs the outlines enclose (whole ones)."""
    from scipy.ndimage import binary_fill_holes

    return _whole(binary_fill_holes(np.asarray(condition)[..., 0] > threshold))


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


@pytest.mark.parametrize("bucket", [(64, 128), (128, 64), (96, 96)], ids=["wide", "tall", "square"])
@pytest.mark.parametrize("size", [(210, 120), (120, 210), (150, 150)], ids=["landscape", "portrait", "square"])
@pytest.mark.parametrize("random_crop", [False, True])
def test_a_condition_drawn_from_the_image_stays_on_it_after_the_crop(bucket, size, random_crop):
    width, height = size
    image, outline = _circles_and_outlines(width, height)
    img, cond, plan = prepare_pair(image, outline, bucket, random_crop, seed=11)
    assert img.size == cond.size == (bucket[1], bucket[0])
    discs, filled = _discs(img), _filled(cond, 100)
    aligned = _iou(filled, discs)
    assert discs.sum() > 300 and aligned > 0.85, (discs.sum(), aligned)
    # The check has teeth: the same outlines three pixels off score clearly worse.
    assert max(_iou(np.roll(filled, 3, axis=1), discs), _iou(np.roll(filled, 3, axis=0), discs)) < aligned - 0.15
