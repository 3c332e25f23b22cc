"""`t2iops data validate` on real files: one test per bad input, each asserting the error class
in the report and that every good row survives."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from t2iops.cli import main
from t2iops.config import load_config
from t2iops.data.dataset import load_rows, load_validated_ids
from t2iops.data.synth import synthesize
from t2iops.data.validate import validate
from t2iops.errors import DataError

COUNT = 10


@pytest.fixture()
def dataset(tmp_path):
    """A fresh 10-row synthetic dataset at 32 px, validated with room for bad rows."""
    cfg = load_config(overrides=[f"data.synth.count={COUNT}", "data.synth.resolution=32", "data.max_bad_fraction=0.5"])
    root = tmp_path / "ds"
    synthesize(str(root), cfg)
    return root, cfg


def read_rows(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]


def write_rows(root: Path, rows: list) -> None:
    (root / "metadata.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def run(root: Path, cfg, out: Path):
    report = validate(str(root), str(out), cfg)
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    good = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    return report, quarantine, good


def assert_only_bad(report, quarantine, good, error: str, bad_ids: set, total: int = COUNT):
    assert report["errors"] == {error: len(bad_ids)}, report["errors"]
    assert {q["error"] for q in quarantine} == {error}
    assert {q["id"] for q in quarantine if q["id"] is not None} <= bad_ids
    good_ids = {g["id"] for g in good}
    assert len(good) == total - len(report["bad_rows"])
    assert good_ids.isdisjoint(bad_ids)
    assert report["good"] == len(good) and report["bad"] == len(quarantine)
    assert report["status"] == "passed"
    for entry in report["bad_rows"]:
        assert entry["error"] == error and entry["message"] and entry["file"] and "row" in entry


def test_clean_synthetic_dataset_passes(dataset, tmp_path):
    root, cfg = dataset
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert report["status"] == "passed" and report["bad"] == 0 and quarantine == []
    assert sorted(g["id"] for g in good) == [f"{i:06d}" for i in range(COUNT)]
    assert set(report["splits"]) <= {"train", "val", "test"} and sum(report["splits"].values()) == COUNT
    assert (tmp_path / "v" / "config.resolved.yaml").exists()
    assert (tmp_path / "v" / "_manifest.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_corrupt_jpeg(dataset, tmp_path, damage):
    root, cfg = dataset
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    data = data[: len(data) // 2] if damage == "truncated" else b"\xff\xd8\xff" + b"garbage" * 50
    (root / "images" / "000003.jpg").write_bytes(data)
    rows = read_rows(root)
    rows[3]["image"] = "images/000003.jpg"
    write_rows(root, rows)
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert_only_bad(report, quarantine, good, "corrupt_image", {"000003"})
    assert quarantine[0]["file"] == "images/000003.jpg"
    assert "images/000003.jpg" in quarantine[0]["message"] and "line 4" in quarantine[0]["message"]


def test_missing_conditioning_file(dataset, tmp_path):
    root, cfg = dataset
    (root / "conditioning_images" / "000004.png").unlink()
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert_only_bad(report, quarantine, good, "missing_file", {"000004"})
    assert quarantine[0]["file"] == "conditioning_images/000004.png"


def test_size_mismatch_strict_then_resize_policy(dataset, tmp_path):
    root, cfg = dataset
    Image.new("L", (40, 32), 0).save(root / "conditioning_images" / "000005.png")
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert_only_bad(report, quarantine, good, "size_mismatch", {"000005"})
    assert "40x32" in quarantine[0]["message"] and "32x32" in quarantine[0]["message"]

    resize_cfg = load_config(overrides=["data.resize_policy=resize", "data.max_bad_fraction=0"])
    report, quarantine, good = run(root, resize_cfg, tmp_path / "v2")
    assert report["bad"] == 0 and len(good) == COUNT
    row = next(r for r in load_rows(str(root), resize_cfg) if r.id == "000005")
    assert row.load_condition().size == row.load_image().size == (32, 32)


@pytest.mark.parametrize("caption", ["", "   "])
def test_empty_caption(dataset, tmp_path, caption):
    root, cfg = dataset
    rows = read_rows(root)
    rows[6]["text"] = caption
    write_rows(root, rows)
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert_only_bad(report, quarantine, good, "empty_caption", {"000006"})


def test_missing_caption_column(dataset, tmp_path):
    root, cfg = dataset
    rows = read_rows(root)
    del rows[6]["text"]
    write_rows(root, rows)
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert_only_bad(report, quarantine, good, "missing_column", {"000006"})
    assert "'text'" in quarantine[0]["message"]


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "images/../../outside.png", "s3://other/x.png"])
def test_path_escaping_the_root(dataset, tmp_path, path):
    root, cfg = dataset
    (tmp_path / "outside.png").write_bytes((root / "images" / "000001.png").read_bytes())
    rows = read_rows(root)
    rows[1]["image"] = path
    write_rows(root, rows)
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert_only_bad(report, quarantine, good, "path_escape", {"000001"})
    assert quarantine[0]["file"] == path


def test_symlink_escaping_the_root(dataset, tmp_path):
    root, cfg = dataset
    outside = tmp_path / "outside.png"
    outside.write_bytes((root / "images" / "000001.png").read_bytes())
    (root / "images" / "link.png").symlink_to(outside)
    rows = read_rows(root)
    rows[1]["image"] = "images/link.png"
    write_rows(root, rows)
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert_only_bad(report, quarantine, good, "path_escape", {"000001"})


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def huge_png(width: int, height: int, full: bool) -> bytes:
    """A 1-bit PNG claiming width x height. ``full``: every row really encoded (all zeros, so zlib
    squeezes ~112 MB of raw rows into ~100 KB); otherwise only the header and a stub IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    if full:
        comp = zlib.compressobj(9)
        rows_block = b"\x00" * ((1 + (width + 7) // 8) * 1000)
        idat = b"".join(comp.compress(rows_block) for _ in range(height // 1000)) + comp.flush()
    else:
        idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.mark.parametrize("full", [False, True], ids=["header_only", "compressible"])
def test_decompression_bomb_refused_from_header(dataset, tmp_path, full):
    root, cfg = dataset
    # Decoding the header-only file would fail as corrupt; getting decompression_bomb instead shows
    # the verdict came from the header before any decoding.
    (root / "images" / "000007.png").write_bytes(huge_png(30000, 30000, full))
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert_only_bad(report, quarantine, good, "decompression_bomb", {"000007"})
    assert "data.max_pixels" in quarantine[0]["message"]


def test_max_pixels_is_the_limit(dataset, tmp_path):
    root, _ = dataset
    cfg = load_config(overrides=["data.max_pixels=2000", "data.max_bad_fraction=0.5"])
    Image.new("RGB", (64, 64), (1, 2, 3)).save(root / "images" / "000002.png")  # 4096 px > 2000 >= 32x32
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert_only_bad(report, quarantine, good, "decompression_bomb", {"000002"})
    assert "64x64 = 4096 pixels" in quarantine[0]["message"]


def test_too_small_image(dataset, tmp_path):
    root, cfg = dataset
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "images" / "000008.png")
    Image.new("L", (8, 8), 0).save(root / "conditioning_images" / "000008.png")
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert_only_bad(report, quarantine, good, "too_small", {"000008"})


def test_duplicate_id_keeps_the_first(dataset, tmp_path):
    root, cfg = dataset
    rows = read_rows(root)
    rows[5]["id"] = rows[2]["id"]
    write_rows(root, rows)
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert report["errors"] == {"duplicate_id": 1}
    assert quarantine[0]["line"] == 6 and quarantine[0]["id"] == "000002"
    assert "line 3" in quarantine[0]["message"]  # names where the id was first used
    assert "000002" in {g["id"] for g in good} and "000005" not in {g["id"] for g in good}
    assert len(good) == COUNT - 1


def test_metadata_line_that_is_not_json(dataset, tmp_path):
    root, cfg = dataset
    rows = read_rows(root)
    rows.insert(3, '{"id": "broken", "image": ')
    rows.insert(7, '["a list", "not an object"]')
    write_rows(root, rows)
    report, quarantine, good = run(root, cfg, tmp_path / "v")
    assert report["errors"] == {"invalid_json": 2}
    assert [q["line"] for q in quarantine] == [4, 8]
    assert "line 4" in quarantine[0]["message"]
    assert len(good) == COUNT  # every real row survives


def test_threshold_fails_above_max_bad_fraction_and_reports_beside_the_output(dataset, tmp_path):
    root, _ = dataset
    (root / "images" / "000001.png").unlink()
    (root / "images" / "000002.png").write_bytes(b"not a png")
    out = tmp_path / "v"
    at_limit = load_config(overrides=["data.max_bad_fraction=0.2"])
    assert validate(str(root), str(out), at_limit)["status"] == "passed"  # 2/10 is not above 0.2
    assert len(load_validated_ids(out)) == COUNT - 2

    strict = load_config(overrides=["data.max_bad_fraction=0.1"])
    with pytest.raises(DataError, match=r"2 of 10 rows are bad .*nothing published at .*v\.failed/report\.json"):
        validate(str(root), str(out), strict)
    assert not out.exists()  # the earlier verdict no longer holds: withdrawn, nothing a next stage could take
    failed = tmp_path / "v.failed"  # the failure report, beside the output and named as such
    report = json.loads((failed / "report.json").read_text())
    assert report["status"] == "failed" and report["errors"] == {"corrupt_image": 1, "missing_file": 1}
    assert len((failed / "quarantine.jsonl").read_text().splitlines()) == 2
    assert not (failed / "rows.jsonl").exists()
    with pytest.raises(DataError, match="failed"):
        load_validated_ids(failed)  # later stages refuse a failed validation


def test_load_rows_with_validated_ids_skips_quarantined_rows(dataset, tmp_path):
    root, cfg = dataset
    (root / "conditioning_images" / "000004.png").unlink()
    run(root, cfg, tmp_path / "v")
    with pytest.raises(DataError, match="validate"):
        [r.load_condition() for r in load_rows(str(root), cfg)]  # unvalidated use hits the bad row
    ids = load_validated_ids(tmp_path / "v")
    rows = load_rows(str(root), cfg, ids=ids)
    assert sorted(r.id for r in rows) == sorted(ids) and "000004" not in ids
    for r in rows:
        assert r.split == ids[r.id]
        assert r.load_condition().mode == "RGB"


def test_cli_validate_exit_codes_and_one_line_reason(dataset, tmp_path, capsys):
    root, _ = dataset
    assert main(["data", "validate", "--root", str(root), "--out", str(tmp_path / "ok")]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "passed"

    (root / "images" / "000000.png").write_bytes(b"broken")
    rc = main(["data", "validate", "--root", str(root), "--out", str(tmp_path / "bad"), "-S", "data.max_bad_fraction=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("t2iops data: error: 1 of 10 rows are bad")
    assert "images/000000.png" in err[0]
    assert not (tmp_path / "bad").exists()
    assert json.loads((tmp_path / "bad.failed" / "report.json").read_text())["status"] == "failed"

    rc = main(["data", "validate", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "nowhere does not exist" in err[0]

    rc = main(["data", "validate", "--root", str(root), "--out", str(tmp_path / "x"), "-S", "data.max_bad_fraction=2"])
    assert rc == 2 and "data.max_bad_fraction" in capsys.readouterr().err


def test_the_report_gives_the_range_of_aspect_ratios(tmp_path):
    cfg = load_config(overrides=["data.synth.count=6", "data.synth.resolution=32",
                                 "data.synth.aspect_ratios=[1.0, 2.0, 0.5]"])
    synthesize(str(tmp_path / "ds"), cfg)
    report, _, _ = run(tmp_path / "ds", cfg, tmp_path / "v")
    # Canvases 32x32, 48x24 and 24x48 (width x height), in turn.
    assert report["aspect_ratios"] == {"min": 0.5, "max": 2.0, "tallest": "000002", "widest": "000001",
                                       "tall": 2, "square": 2, "wide": 2}
