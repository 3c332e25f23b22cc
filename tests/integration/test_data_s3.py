"""The dataset stages against a real S3 server on loopback: synth to s3://, validate reading
from s3:// and publishing to s3://, load rows back, annotate from s3://."""
from __future__ import annotations

import json

import boto3
import pytest

from t2iops import storage
from t2iops.cli import main
from t2iops.config import load_config
from t2iops.data.dataset import load_rows, load_validated_ids
from t2iops.data.synth import PALETTE
from t2iops.errors import DataError

pytestmark = pytest.mark.s3


def settings(endpoint, tmp_path) -> list[str]:
    return ["-S", f"storage.endpoint_url={endpoint}", "-S", f"storage.cache_dir={tmp_path / 'cache'}",
            "-S", "storage.max_attempts=2"]


def test_synth_to_s3_then_validate_from_s3(s3_bucket, tmp_path, capsys):
    endpoint, bucket = s3_bucket
    opts = settings(endpoint, tmp_path)
    data, validated = f"s3://{bucket}/datasets/circles", f"s3://{bucket}/validated/circles"
    assert main(["data", "synth", "--out", data, "-S", "data.synth.count=6", "-S", "data.synth.resolution=16", *opts]) == 0
    cfg = load_config(overrides=opts[1::2])
    manifest = storage.read_manifest(data, cfg)
    assert manifest["stage"] == "synth" and len(manifest["files"]) == 6 * 2 + 2

    assert main(["data", "validate", "--root", data, "--out", validated, *opts]) == 0
    capsys.readouterr()
    report = json.loads(storage.read_text(f"{validated}/report.json", cfg))
    assert report["status"] == "passed" and report["good"] == 6 and report["root"] == data
    ids = load_validated_ids(validated, cfg)
    rows = load_rows(data, cfg, ids=ids)
    assert sorted(r.id for r in rows) == sorted(ids) and len(rows) == 6
    for row in rows[:3]:
        c = row.meta["circle"]
        assert row.load_image().getpixel((c["cx"], c["cy"])) == PALETTE[row.meta["color"]]


@pytest.mark.slow  # ~20 s on the shared 2-core machine: many small S3 round trips
def test_bad_row_on_s3_fails_validation_with_report_on_s3(s3_bucket, tmp_path, capsys):
    endpoint, bucket = s3_bucket
    opts = settings(endpoint, tmp_path)
    data, validated = f"s3://{bucket}/d", f"s3://{bucket}/v"
    # A dataset uploaded by hand (not published: no manifest), as users bring their own.
    local = tmp_path / "d"
    assert main(["data", "synth", "--out", str(local), "-S", "data.synth.count=6", "-S", "data.synth.resolution=16"]) == 0
    storage.upload_dir(local, data, load_config(overrides=opts[1::2]), exclude=(storage.MANIFEST,))
    cfg = load_config(overrides=opts[1::2])
    load_rows(data, cfg)  # warm the local cache: a changed object must still be seen below
    boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=bucket, Key="d/images/000002.png", Body=b"junk")
    capsys.readouterr()

    rc = main(["data", "validate", "--root", data, "--out", validated, *opts])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "1 of 6 rows are bad" in err[0] and "images/000002.png" in err[0]
    # Nothing at --out that encode could take for a verdict; the failure report beside it, named so.
    assert not storage.is_published(validated, cfg) and not storage.list_files(validated, cfg)
    failed = f"{validated}.failed"
    assert f"report: {failed}/report.json" in err[0]
    report = json.loads(storage.read_text(f"{failed}/report.json", cfg))
    assert report["status"] == "failed" and report["errors"] == {"corrupt_image": 1}
    quarantine = storage.read_text(f"{failed}/quarantine.jsonl", cfg).splitlines()
    assert json.loads(quarantine[0])["id"] == "000002"
    assert not storage.exists(f"{failed}/rows.jsonl", cfg)
    with pytest.raises(DataError, match="failed"):
        load_validated_ids(failed, cfg)
    with pytest.raises(DataError, match="run `t2iops data validate"):
        load_validated_ids(validated, cfg)


@pytest.mark.slow  # imports torch + kornia for canny
def test_annotate_from_s3_images(s3_bucket, tmp_path):
    from PIL import Image, ImageDraw

    endpoint, bucket = s3_bucket
    opts = settings(endpoint, tmp_path)
    local = tmp_path / "photos"
    local.mkdir()
    for i in range(2):
        image = Image.new("RGB", (32, 32), (20, 20, 20))
        ImageDraw.Draw(image).rectangle((8, 8, 20 + i, 20), fill=(230, 230, 230))
        image.save(local / f"p{i}.png")
    (local / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"p{i}.png", "text": f"square {i}"}) + "\n"
                                                  for i in range(2)))
    cfg = load_config(overrides=opts[1::2])
    storage.upload_dir(local, f"s3://{bucket}/photos", cfg)
    out = f"s3://{bucket}/annotated"
    assert main(["data", "annotate", "--kind", "canny", "--images", f"s3://{bucket}/photos", "--out", out, *opts]) == 0
    rows = load_rows(out, cfg)
    assert sorted(r.text for r in rows) == ["square 0", "square 1"]
    edges = rows[0].load_condition().convert("L")
    assert edges.getextrema() == (0, 255)
