"""Aspect-ratio buckets: the lists encode.buckets names, and which bucket a sample goes to."""
from __future__ import annotations

import math

import pytest

from t2iops.config import ConfigError, load_config
from t2iops.data.buckets import SDXL_BUCKETS, beyond_range, bucket_list, nearest_bucket, parse_bucket
from t2iops.errors import UsageError


def test_auto_at_1024_is_sdxls_list_square_first_and_about_one_megapixel():
    buckets = bucket_list("auto", 1024, 64)
    assert buckets[0] == (1024, 1024) and sorted(buckets) == sorted(SDXL_BUCKETS)
    assert all(h % 64 == 0 and w % 64 == 0 for h, w in buckets)
    assert all(0.85 < h * w / 1024**2 < 1.1 for h, w in buckets)
    aspects = sorted(w / h for h, w in buckets)
    assert aspects[0] == pytest.approx(640 / 1536) and aspects[-1] == pytest.approx(1536 / 640)  # 1:2.4 .. 2.4:1


def test_auto_scales_to_the_resolution_area_and_rounds_to_the_multiple():
    buckets = bucket_list("auto", 512, 32)
    assert buckets[0] == (512, 512)
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in buckets)
    assert all(0.8 < h * w / 512**2 < 1.2 for h, w in buckets)
    assert (768, 320) in buckets and (320, 768) in buckets  # 1536x640 at half the side
    # A multiple as large as the side collapses neighbours: no duplicates are kept.
    small = bucket_list("auto", 64, 64)
    assert len(small) == len(set(small)) and small[0] == (64, 64)


def test_auto_on_a_coarse_grid_keeps_each_aspect_near_sdxls():
    """At 64 px with a factor of 16, rounding each side alone made SDXL's 2.4:1 bucket 3:1 (96x32),
    wider than any SDXL bucket; the fit picks the nearest aspect among sizes within a quarter of
    the target's area instead, and at SDXL's own sizes it changes nothing."""
    import math

    from t2iops.data.buckets import SDXL_BUCKETS

    coarse = bucket_list("auto", 64, 16)
    assert coarse == [(64, 64), (80, 48), (48, 80), (96, 48), (48, 96)]
    widest = max(math.log(w / h) for h, w in SDXL_BUCKETS)
    for res, multiple in ((64, 16), (64, 8), (128, 16), (512, 64), (768, 64)):
        for h, w in bucket_list("auto", res, multiple):
            assert abs(math.log(w / h)) <= widest + 1e-9, (res, multiple, h, w)
            assert 0.75 <= h * w / res**2 <= 1.35, (res, multiple, h, w)
    for multiple in (8, 16, 32, 64):
        assert sorted(bucket_list("auto", 1024, multiple)) == sorted(SDXL_BUCKETS)


def test_square_and_explicit_lists():
    assert bucket_list("square", 1024, 64) == [(1024, 1024)]
    assert bucket_list(["832x1216", "1024x1024", "1216x832"], 1024, 64) == [(1024, 1024), (832, 1216), (1216, 832)]
    with pytest.raises(UsageError, match=r"1000x1000 is not a multiple of 64.*1024x1024"):
        bucket_list(["1000x1000"], 1024, 64)
    with pytest.raises(UsageError, match="HEIGHTxWIDTH"):
        parse_bucket("wide")
    with pytest.raises(UsageError, match="empty list"):
        bucket_list([], 1024, 64)


def test_each_sample_goes_to_the_bucket_nearest_its_aspect_in_log_space():
    buckets = bucket_list("auto", 1024, 64)
    assert nearest_bucket(1000, 1000, buckets) == (1024, 1024)
    assert nearest_bucket(1080, 1920, buckets) == (768, 1344)  # 16:9 photo (1.78; 1344/768 = 1.75)
    assert nearest_bucket(1920, 1080, buckets) == (1344, 768)  # 9:16 phone shot
    assert nearest_bucket(2000, 3000, buckets) == (832, 1216)  # 3:2 (1.5; 1216/832 = 1.46)
    # log space: 2:1 and 1:2 are equally far from 1:1, and each lands on its mirror bucket
    wide, tall = nearest_bucket(100, 200, buckets), nearest_bucket(200, 100, buckets)
    assert wide == tall[::-1]
    assert abs(math.log(wide[1] / wide[0]) - math.log(2)) < 0.2


def test_beyond_the_extreme_buckets_is_flagged_but_still_placed():
    buckets = bucket_list("auto", 1024, 64)
    assert not beyond_range(640, 1536, buckets) and not beyond_range(1000, 2000, buckets)
    assert beyond_range(100, 400, buckets) and beyond_range(400, 100, buckets)  # 4:1 and 1:4
    assert nearest_bucket(100, 400, buckets) == (640, 1536)


def test_the_configuration_checks_the_form_naming_the_key():
    assert load_config(None, ["encode.buckets=[512x768, 768x512]"]).encode.buckets == ["512x768", "768x512"]
    assert load_config(None).encode.buckets == "auto"  # the real-SDXL default
    with pytest.raises(ConfigError, match=r"encode\.buckets.*'512by768' is not a bucket"):
        load_config(None, ["encode.buckets=[512by768]"])
    with pytest.raises(ConfigError, match=r"data\.synth\.aspect_ratios"):
        load_config(None, ["data.synth.aspect_ratios=[9]"])
