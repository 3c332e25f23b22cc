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
    plan = plan_crop(width=96, height=48, resolution=32, random_crop=False, seed=0)
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
