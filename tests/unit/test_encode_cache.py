"""The encode stage on tiny models: what the cache holds, and that a change re-encodes exactly
the affected part."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from t2iops import storage
from t2iops.config import load_config
from t2iops.data.validate import validate
from t2iops.encode import encode_dataset
from t2iops.encode.cache import CacheReader, read_index

SIZES = [(64, 64), (96, 64), (64, 128), (80, 80), (64, 64), (128, 96)]  # (width, height)


pytestmark = pytest.mark.usefixtures("one_thread")


def write_dataset(root, captions=None):
    """Rows of different sizes (so SDXL time ids differ per sample); condition = a ring."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "conditioning_images").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, (w, h) in enumerate(SIZES):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:h, :w]
        ring = (np.abs(np.hypot(yy - h / 2, xx - w / 3) - min(h, w) / 4) < 2)[..., None].repeat(3, -1)
        Image.fromarray(img).save(root / f"images/{i}.png")
        Image.fromarray((ring * 255).astype(np.uint8)).save(root / f"conditioning_images/{i}.png")
        text = (captions or {}).get(i, "red circle with blue background" if i % 2 else "green circle with black background")
        rows.append({"id": f"{i:02d}", "image": f"images/{i}.png", "conditioning_image": f"conditioning_images/{i}.png",
                     "text": text})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def _cfg(model, *extra):
    return load_config(overrides=[f"model.base_model={model}", "model.dtype=fp32", "data.val_fraction=0.0",
                                  "data.test_fraction=0.0", "encode.resolution=64", "encode.shard_size=4",
                                  "encode.batch_size=4", "encode.storage_dtype=fp32", "encode.buckets=square", *extra])


def _prepared(tmp_path, model, *extra):
    data = write_dataset(tmp_path / "data")
    cfg = _cfg(model, *extra)
    validate(str(data), str(tmp_path / "validated"), cfg)
    return data, cfg


def _inodes(folder):
    return {str(p.relative_to(folder)): p.stat().st_ino for p in folder.rglob("*.safetensors")}


def test_sdxl_cache_contents(tmp_path, tiny_sdxl_path):
    data, cfg = _prepared(tmp_path, tiny_sdxl_path)
    out = tmp_path / "cache"
    encode_dataset(str(data), str(tmp_path / "validated"), str(out), cfg)
    assert storage.is_published(str(out)) and (out / "config.resolved.yaml").exists()
    index = read_index(out)
    assert index["family"] == "sdxl" and index["resolution"] == 64
    assert index["base_model"]["path"] == tiny_sdxl_path and index["base_model"]["config_hash"]
    reader = CacheReader(out, "train")
    assert len(reader) == 6 and reader.latent_part["shards"] == [
        {"file": "shard-00000.safetensors", "count": 4, "bucket": [64, 64]},
        {"file": "shard-00001.safetensors", "count": 2, "bucket": [64, 64]}]
    assert index["buckets"] == [[64, 64]] and reader.buckets == [(64, 64)]
    # Captions are deduplicated: 2 unique captions, embedded once each, plus the empty prompt.
    assert reader.text_part["captions"] == ["green circle with black background", "red circle with blue background"]
    s = reader.sample(2)
    assert s["condition"].dtype == torch.uint8 and s["condition"].shape == (3, 64, 64)
    assert s["latent"].shape == (8, 16, 16)  # mean + logvar of a 4-channel latent, VAE downscale 4
    assert s["pooled_prompt_embeds"].ndim == 1
    # Per-sample time ids: original (h, w), crop top-left, target size.
    time_ids = [reader.sample(i)["time_ids"].tolist() for i in range(6)]
    assert time_ids[0] == [64, 64, 0, 0, 64, 64]
    assert time_ids[1] == [64, 96, 0, 16, 64, 64]  # 96x64 -> centre crop 16 px from the left
    assert time_ids[2] == [128, 64, 32, 0, 64, 64]
    assert len({tuple(t) for t in time_ids}) == 5
    empty = reader.empty_prompt()
    assert set(empty) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert index["force_zeros_for_empty_prompt"] is True  # SDXL pipelines' default


def test_latents_are_the_vae_posterior_of_the_resized_image(tmp_path, tiny_sd15_path):
    from t2iops.encode.augment import prepare_pair
    from t2iops.models.resolve import load_base_model

    data, cfg = _prepared(tmp_path, tiny_sd15_path, "encode.random_flip=true")
    out = tmp_path / "cache"
    encode_dataset(str(data), str(tmp_path / "validated"), str(out), cfg)
    reader = CacheReader(out, "train")
    assert "pooled_prompt_embeds" not in reader.sample(0) and reader.family == "sd15"
    vae = load_base_model(cfg.model, components=("vae",)).vae
    image = Image.open(data / "images/1.png").convert("RGB")
    img, cond, _ = prepare_pair(image, Image.open(data / "conditioning_images/1.png").convert("RGB"), 64, False, 0)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = vae.encode(x).latent_dist.parameters[0]
        expected_flipped = vae.encode(x.flip(-1)).latent_dist.parameters[0]
    torch.testing.assert_close(reader.sample(1)["latent"], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reader.sample(1, flipped=True)["latent"], expected_flipped, atol=1e-5, rtol=1e-4)
    assert np.array_equal(reader.sample(1)["condition"].permute(1, 2, 0).numpy(), np.asarray(cond))


def test_rerun_is_a_noop_and_changes_reencode_only_their_part(tmp_path, tiny_sd15_path):
    data, cfg = _prepared(tmp_path, tiny_sd15_path)
    out = tmp_path / "cache"
    validated = str(tmp_path / "validated")
    encode_dataset(str(data), validated, str(out), cfg)
    first = read_index(out)
    manifest_mtime = (out / "_manifest.json").stat().st_mtime_ns
    inodes = _inodes(out)

    # Nothing changed: nothing is written.
    encode_dataset(str(data), validated, str(out), cfg)
    assert (out / "_manifest.json").stat().st_mtime_ns == manifest_mtime and _inodes(out) == inodes

    # Another VAE: latents re-encoded, text carried over (same files).
    from t2iops.models.resolve import load_base_model

    vae = load_base_model(cfg.model, components=("vae",)).vae
    with torch.no_grad():
        for p in vae.parameters():
            p.mul_(0.9)
    vae.save_pretrained(tmp_path / "other-vae")
    cfg_vae = _cfg(tiny_sd15_path, f"model.vae={tmp_path / 'other-vae'}")
    encode_dataset(str(data), validated, str(out), cfg_vae)
    second = read_index(out)
    assert second["text"] == first["text"] and second["latents"]["key"] != first["latents"]["key"]
    now = _inodes(out)
    assert {k: v for k, v in now.items() if k.startswith("text/")} == {k: v for k, v in inodes.items() if k.startswith("text/")}
    assert not (out / first["latents"]["dir"]).exists()

    # A caption edited: text re-encoded, latents carried over.
    write_dataset(data, captions={3: "blue circle with red background"})
    validate(str(data), validated, cfg_vae)
    encode_dataset(str(data), validated, str(out), cfg_vae)
    third = read_index(out)
    assert third["latents"] == second["latents"] and third["text"]["key"] != second["text"]["key"]
    assert third["dataset_version"] != second["dataset_version"]
    after = _inodes(out)
    assert {k: v for k, v in after.items() if k.startswith("latents/")} == {k: v for k, v in now.items() if k.startswith("latents/")}
    reader = CacheReader(out, "train")
    assert reader.caption(3) == "blue circle with red background"

    # The resolution changes the latents only.
    encode_dataset(str(data), validated, str(out), _cfg(tiny_sd15_path, f"model.vae={tmp_path / 'other-vae'}",
                                                       "encode.resolution=32"))
    fourth = read_index(out)
    assert fourth["text"] == third["text"] and fourth["latents"]["key"] != third["latents"]["key"]
    assert CacheReader(out, "train").sample(0)["condition"].shape == (3, 32, 32)


def test_encode_refuses_empty_selection(tmp_path, tiny_sd15_path):
    from t2iops.errors import DataError

    data, cfg = _prepared(tmp_path, tiny_sd15_path)
    cfg = _cfg(tiny_sd15_path, "encode.splits=[test]")
    with pytest.raises(DataError, match="encode.splits"):
        encode_dataset(str(data), str(tmp_path / "validated"), str(tmp_path / "cache"), cfg)


def test_encode_cli(tmp_path, tiny_sd15_path, monkeypatch):
    from t2iops.cli import main

    data, _ = _prepared(tmp_path, tiny_sd15_path)
    monkeypatch.chdir(tmp_path)
    rc = main(["encode", "--data", str(data), "--validated", str(tmp_path / "validated"), "--out", "cache",
               "-S", f"model.base_model={tiny_sd15_path}", "-S", "data.val_fraction=0", "-S", "data.test_fraction=0",
               "-S", "encode.resolution=32"])
    assert rc == 0 and len(CacheReader(tmp_path / "cache", "train")) == 6
    assert os.path.exists(tmp_path / "cache" / "_manifest.json")


def test_sharded_encode_merges_into_the_one_process_cache(tmp_path, tiny_sdxl_path):
    from t2iops.cli import main
    from t2iops.encode.cache import CACHE_FORMAT

    data, cfg = _prepared(tmp_path, tiny_sdxl_path, "encode.shard_size=2", "encode.batch_size=2")
    validated = str(tmp_path / "validated")
    encode_dataset(str(data), validated, str(tmp_path / "whole"), cfg)
    overrides = sum((["-S", o] for o in [f"model.base_model={tiny_sdxl_path}", "data.val_fraction=0.0",
                                        "data.test_fraction=0.0", "encode.resolution=64", "encode.shard_size=2",
                                        "encode.batch_size=2", "encode.storage_dtype=fp32"]), [])
    for i in range(3):
        assert main(["encode", "--data", str(data), "--validated", validated, "--out", str(tmp_path / f"s{i}"),
                     "--shard", f"{i}/3", *overrides]) == 0
    assert main(["encode", "merge", "--shards", *(str(tmp_path / f"s{i}") for i in (2, 0, 1)),
                 "--out", str(tmp_path / "merged"), *overrides]) == 0
    whole, merged = storage.read_manifest(tmp_path / "whole"), storage.read_manifest(tmp_path / "merged")
    # Every shard, part.json and cache.json: the same bytes (config.resolved.yaml records how each was run).
    assert {k: v for k, v in whole["files"].items() if k != "config.resolved.yaml"} == \
        {k: v for k, v in merged["files"].items() if k != "config.resolved.yaml"}
    assert read_index(tmp_path / "merged")["format"] == CACHE_FORMAT
    a, b = CacheReader(tmp_path / "whole", "train"), CacheReader(tmp_path / "merged", "train")
    for i in range(len(a)):
        for k, v in a.sample(i).items():
            assert torch.equal(v, b.sample(i)[k]), (i, k)
    from t2iops.encode.sharded import merge_shards
    from t2iops.errors import UsageError

    with pytest.raises(UsageError, match="every slice 0..2 of 3 exactly once"):
        merge_shards([str(tmp_path / "s0"), str(tmp_path / "s2")], str(tmp_path / "bad"), cfg)
    assert not (tmp_path / "bad").exists()


def test_conditions_are_stored_as_lossless_png(tmp_path):
    from t2iops.encode.cache import decode_png, encode_png

    ring = torch.zeros(3, 64, 64, dtype=torch.uint8)
    ring[:, 10:12, 5:50] = 255
    coloured = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    for condition in (ring, coloured):
        assert torch.equal(decode_png(encode_png(condition), "x"), condition)
    assert len(encode_png(ring)) < ring.numel() // 20
    from t2iops.errors import DataError

    with pytest.raises(DataError, match="row 3: stored condition is not a valid PNG"):
        decode_png(b"garbage", "cache row 3")


def _as_format_2(cache):
    """Rewrite a square cache's index as format 2 wrote it (no bucket fields): the shards and
    parts of a one-bucket square cache are laid out exactly as format 2 laid them out."""
    path = cache / "cache.json"
    index = json.loads(path.read_text())
    index["format"] = 2
    index.pop("buckets", None)
    for entry in index["samples"].values():
        entry.pop("buckets", None)
    path.write_text(json.dumps(index))
    return index


def test_a_format_2_cache_reads_as_one_square_bucket_of_its_resolution(tmp_path, tiny_sd15_path):
    from t2iops.errors import DataError

    data, cfg = _prepared(tmp_path, tiny_sd15_path, "encode.resolution=32")
    out = tmp_path / "cache"
    encode_dataset(str(data), str(tmp_path / "validated"), str(out), cfg)
    index = _as_format_2(out)
    reader = CacheReader(out, "train")
    assert reader.buckets == [(32, 32)] and [reader.bucket_of(i) for i in range(len(reader))] == [0] * 6
    assert reader.sample(3)["latent"].shape[-2:] == (8, 8)
    del index["resolution"]
    (out / "cache.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="format 2 cache without its resolution"):
        CacheReader(out, "train")


MIXED = "encode.buckets=[64x64, 48x96, 96x48]"  # square, wide (h 48 x w 96), tall; multiples of 16


def test_mixed_buckets_round_trip_one_bucket_per_shard(tmp_path, tiny_sdxl_path):
    from safetensors import safe_open

    from t2iops.encode.augment import prepare_pair

    data, cfg = _prepared(tmp_path, tiny_sdxl_path, MIXED)
    out = tmp_path / "cache"
    encode_dataset(str(data), str(tmp_path / "validated"), str(out), cfg)
    index, reader = read_index(out), CacheReader(out, "train")
    assert index["format"] == 3 and index["buckets"] == [[64, 64], [48, 96], [96, 48]]
    assert reader.buckets == [(64, 64), (48, 96), (96, 48)]
    # 96x64 (3:2) is nearer 2:1 than 1:1 in log aspect, 64x128 is 1:2, 128x96 (4:3) stays square.
    assert reader.ids == ["00", "01", "02", "03", "04", "05"]
    assert [reader.bucket_of(i) for i in range(6)] == [0, 1, 2, 0, 0, 0]
    # Each bucket starts its own shard; a row is shard * shard_size + position (shard_size 4).
    assert reader.latent_rows == [0, 4, 8, 1, 2, 3]
    assert [(s["file"], s["count"], s["bucket"]) for s in reader.latent_part["shards"]] == [
        ("shard-00000.safetensors", 4, [64, 64]), ("shard-00001.safetensors", 1, [48, 96]),
        ("shard-00002.safetensors", 1, [96, 48])]
    for shard in reader.latent_part["shards"]:
        with safe_open(str(out / index["latents"]["dir"] / shard["file"]), framework="pt") as f:
            h, w = shard["bucket"]
            assert f.get_slice("latent_moments").get_shape() == [shard["count"], 8, h // 4, w // 4]
    for i in range(6):
        s = reader.sample(i)
        h, w = reader.buckets[reader.bucket_of(i)]
        assert s["latent"].shape == (8, h // 4, w // 4) and s["condition"].shape == (3, h, w)
        assert s["time_ids"].tolist()[4:] == [h, w] and reader.files_of(i)[0].endswith(
            f"shard-{reader.latent_rows[i] // 4:05d}.safetensors")
    assert reader.sample(1)["time_ids"].tolist() == [64, 96, 8, 0, 48, 96]  # true size, crop corner, bucket
    assert reader.sample(2)["time_ids"].tolist() == [128, 64, 0, 0, 96, 48]  # 1:2 fits the bucket whole
    image = Image.open(data / "images/1.png").convert("RGB")
    _, cond, _ = prepare_pair(image, Image.open(data / "conditioning_images/1.png").convert("RGB"), (48, 96), False, 0)
    assert np.array_equal(reader.sample(1)["condition"].permute(1, 2, 0).numpy(), np.asarray(cond))


def test_samples_beyond_every_bucket_go_to_the_nearest_and_are_counted(tmp_path, tiny_sd15_path, caplog):
    import logging

    data, cfg = _prepared(tmp_path, tiny_sd15_path, "encode.buckets=[64x64, 64x128]", "encode.resolution=64")
    with caplog.at_level(logging.INFO, logger="t2iops.encode"):
        encode_dataset(str(data), str(tmp_path / "validated"), str(tmp_path / "cache"), cfg)
    reader = CacheReader(tmp_path / "cache", "train")
    assert [reader.bucket_of(i) for i in range(6)] == [0, 1, 0, 0, 0, 0]  # the 1:2 portrait goes to the square
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "every bucket" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("encode: 1 sample(s)") and warnings[0].endswith(": 02")
    assert any("2 bucket(s), sides multiples of 16: 64x64 (5), 64x128 (1)" in r.getMessage() for r in caplog.records)


def test_explicit_buckets_that_do_not_fit_the_model_are_refused(tmp_path, tiny_sdxl_path):
    from t2iops.errors import UsageError

    data, cfg = _prepared(tmp_path, tiny_sdxl_path, "encode.buckets=[64x64, 40x96]")
    with pytest.raises(UsageError, match="40x96 is not a multiple of 16"):
        encode_dataset(str(data), str(tmp_path / "validated"), str(tmp_path / "cache"), cfg)


def test_sharded_encode_with_mixed_buckets_merges_into_the_one_process_cache(tmp_path, tiny_sdxl_path):
    from t2iops.encode.sharded import encode_shard, merge_shards

    data, cfg = _prepared(tmp_path, tiny_sdxl_path, MIXED, "encode.shard_size=2", "encode.batch_size=2")
    validated = str(tmp_path / "validated")
    encode_dataset(str(data), validated, str(tmp_path / "whole"), cfg)
    for i in range(3):  # four latent blocks (square: 2, wide: 1, tall: 1) over three slices
        encode_shard(str(data), validated, str(tmp_path / f"s{i}"), cfg, (i, 3))
    merge_shards([str(tmp_path / f"s{i}") for i in range(3)], str(tmp_path / "merged"), cfg)
    whole, merged = storage.read_manifest(tmp_path / "whole"), storage.read_manifest(tmp_path / "merged")
    assert {k: v for k, v in whole["files"].items() if k != "config.resolved.yaml"} == \
        {k: v for k, v in merged["files"].items() if k != "config.resolved.yaml"}
    reader = CacheReader(tmp_path / "merged", "train")
    assert [s["bucket"] for s in reader.latent_part["shards"]] == [[64, 64], [64, 64], [48, 96], [96, 48]]
    assert [reader.bucket_of(i) for i in range(6)] == [0, 1, 2, 0, 0, 0]
