"""Atomic publishing and manifests on local paths."""
from __future__ import annotations

import json

import pytest

from t2iops import storage


def test_publish_writes_manifest_last_with_hashes(tmp_path):
    dest = tmp_path / "out"
    with storage.publish(dest, extra={"stage": "unit"}) as staging:
        (staging / "a.txt").write_text("hello")
        (staging / "sub").mkdir()
        (staging / "sub" / "b.bin").write_bytes(b"\x00\x01")
        assert not dest.exists(), "nothing is visible before the block finishes"
    manifest = storage.read_manifest(dest)
    assert manifest["stage"] == "unit"
    assert set(manifest["files"]) == {"a.txt", "sub/b.bin"}
    assert manifest["files"]["a.txt"]["sha256"] == storage.sha256_file(dest / "a.txt")
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_failed_publish_leaves_nothing_and_keeps_previous_output(tmp_path):
    dest = tmp_path / "out"
    with storage.publish(dest) as staging:
        (staging / "v1.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with storage.publish(dest) as staging:
            (staging / "v2.txt").write_text("2")
            raise RuntimeError("stage crashed")
    assert (dest / "v1.txt").exists() and not (dest / "v2.txt").exists()
    assert storage.is_published(dest)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_republish_replaces_whole_output(tmp_path):
    dest = tmp_path / "out"
    with storage.publish(dest) as staging:
        (staging / "old.txt").write_text("1")
    with storage.publish(dest) as staging:
        (staging / "new.txt").write_text("2")
    assert sorted(storage.list_files(dest)) == ["_manifest.json", "new.txt"]


def test_unpublished_folder_is_reported(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "x").write_text("partial")
    with pytest.raises(storage.NotPublished, match="_manifest.json"):
        storage.read_manifest(tmp_path / "half")


def test_manifest_extra_file_is_merged(tmp_path):
    with storage.publish(tmp_path / "o") as staging:
        (staging / "_manifest.extra.json").write_text(json.dumps({"rows": 3}))
        (staging / "f").write_text("x")
    m = storage.read_manifest(tmp_path / "o")
    assert m["rows"] == 3 and "_manifest.extra.json" not in m["files"]


def test_write_bytes_and_materialize_local(tmp_path):
    storage.write_bytes(tmp_path / "d" / "f.txt", b"abc")
    assert storage.read_text(tmp_path / "d" / "f.txt") == "abc"
    assert storage.materialize(str(tmp_path / "d")) == tmp_path / "d"
    with pytest.raises(FileNotFoundError):
        storage.materialize(str(tmp_path / "missing"))


def test_s3_uri_parsing():
    assert storage.split_s3("s3://bucket/a/b") == ("bucket", "a/b")
    assert storage.join("s3://bucket/a/", "b", "c.txt") == "s3://bucket/a/b/c.txt"
    with pytest.raises(storage.StorageError):
        storage.split_s3("s3:///nobucket")


def test_published_files_get_the_read_bits_the_umask_allows(tmp_path):
    """safetensors writes weights owner-only (0600): a model published by root must still be
    readable by the image's uid 1000. The umask decides: 022 opens reads, 077 keeps them private."""
    import os
    import stat

    for umask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o077, 0o600, 0o700)):
        previous = os.umask(umask)
        try:
            out = tmp_path / f"model-{umask:o}"
            with storage.publish(out) as staging:
                (staging / "unet").mkdir(mode=0o700)
                weights = staging / "unet" / "diffusion_pytorch_model.safetensors"
                weights.write_bytes(b"\0" * 8)
                weights.chmod(0o600)
        finally:
            os.umask(previous)
        assert stat.S_IMODE((out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mode) == file_mode
        assert stat.S_IMODE((out / "unet").stat().st_mode) == dir_mode
