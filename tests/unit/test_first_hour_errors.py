"""A new user's first mistakes each get one line that names the problem and the fix, with the
exit code the README states (2: a usage or configuration error, nothing was done).

Each test runs the real CLI (``main([...])``) on a small synthetic dataset."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from t2iops.cli import main
from t2iops.config import load_config
from t2iops.data.synth import synthesize

COUNT = 20


@pytest.fixture(scope="module")
def twenty(tmp_path_factory):
    """20 synthetic rows at 32 px, as a user's first dataset of their own."""
    root = tmp_path_factory.mktemp("first-hour") / "my-dataset"
    synthesize(str(root), load_config(overrides=[f"data.synth.count={COUNT}", "data.synth.resolution=32"]))
    return root


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(err) == 1, err
    return err[0]


def _renamed(twenty, tmp_path, old: str, new: str):
    """A copy of the dataset whose metadata calls column ``old`` ``new``."""
    root = tmp_path / "renamed"
    root.mkdir()
    for folder in ("images", "conditioning_images"):
        shutil.copytree(twenty / folder, root / folder)
    rows = [json.loads(line) for line in (twenty / "metadata.jsonl").read_text().splitlines()]
    (root / "metadata.jsonl").write_text("".join(
        json.dumps({(new if k == old else k): v for k, v in row.items()}) + "\n" for row in rows))
    return root


def test_an_empty_test_split_is_warned_at_validate_and_refused_by_evaluate_with_the_fix(twenty, tmp_path, capsys,
                                                                                      caplog):
    out = tmp_path / "validated"
    small = ["-S", "data.test_fraction=0.01"]  # 20 rows at 1 %: the test split comes out empty
    assert main(["data", "validate", "--root", str(twenty), "--out", str(out), *small]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "test" not in report["splits"]
    [warning] = [w for w in report["warnings"] if "'test'" in w]
    assert "data.test_fraction=0.01" in warning and "-S data.test_fraction=0.15" in warning
    assert any(warning in r.getMessage() for r in caplog.records if r.levelname == "WARNING")  # also logged

    rc = main(["evaluate", "--adapter", str(tmp_path / "no-adapter"), "--data", str(twenty),
               "--validated", str(out), "--out", str(tmp_path / "eval"), *small])
    line = _error_line(capsys)
    assert rc == 2, line  # a configuration error, found before any model loads
    assert "split 'test'" in line and "data.test_fraction=0.15" in line and "t2iops data validate" in line
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("setting,column,renamed_to", [
    ("caption_column", "text", "caption"),
    ("image_column", "image", "target"),
    ("conditioning_image_column", "conditioning_image", "hint"),
])
def test_an_unknown_column_lists_the_columns_and_the_setting_to_change(twenty, tmp_path, capsys, setting, column,
                                                                      renamed_to):
    root = _renamed(twenty, tmp_path, column, renamed_to)
    out = tmp_path / "validated"
    rc = main(["data", "validate", "--root", str(root), "--out", str(out)])
    line = _error_line(capsys)
    assert rc == 2, line  # not "20 of 20 rows are bad" (exit 1)
    assert f"data.{setting}={column!r} names no column" in line
    assert "its columns are: " in line and renamed_to in line.split("its columns are: ")[1]
    assert f"Did you mean {renamed_to!r}? Set -S data.{setting}={renamed_to}" in line
    assert not out.exists() and not (tmp_path / "validated.failed").exists()  # nothing was done
    assert main(["data", "validate", "--root", str(root), "--out", str(out), "-S", f"data.{setting}={renamed_to}"]) == 0


def test_a_failed_validation_publishes_nothing_at_out_and_its_report_beside_it(twenty, tmp_path, capsys):
    root = _renamed(twenty, tmp_path, "text", "caption")
    rows = (root / "metadata.jsonl").read_text().splitlines()
    (root / "metadata.jsonl").write_text("\n".join(rows[:-1] + ["{not json"]) + "\n")
    out, failed = tmp_path / "validated", tmp_path / "validated.failed"
    caption = ["-S", "data.caption_column=caption", "-S", "data.max_bad_fraction=0.1"]
    assert main(["data", "validate", "--root", str(root), "--out", str(out), *caption]) == 0
    assert main(["data", "validate", "--root", str(root), "--out", str(out), *caption,
                 "-S", "data.max_bad_fraction=0.01"]) == 1  # 1 of 20 bad is now too many
    line = _error_line(capsys)
    assert f"nothing published at {out}" in line and str(failed / "report.json") in line
    assert not out.exists()  # the earlier verdict was withdrawn: encode cannot take it for this run's
    assert json.loads((failed / "report.json").read_text())["status"] == "failed"
    assert json.loads((failed / "_manifest.json").read_text())["status"] == "failed"
    assert sorted(p.name for p in failed.iterdir()) == ["_manifest.json", "config.resolved.yaml", "quarantine.jsonl",
                                                      "report.json"]  # no rows.jsonl
    assert main(["data", "validate", "--root", str(root), "--out", str(out), *caption]) == 0
    assert (out / "rows.jsonl").exists() and not failed.exists()  # a pass clears the stale failure report

    # Only an earlier verdict is withdrawn, never another stage's output named as --out by mistake.
    assert main(["data", "validate", "--root", str(root), "--out", str(twenty), *caption,
                 "-S", "data.max_bad_fraction=0.01"]) == 1
    assert (twenty / "metadata.jsonl").exists() and (twenty.parent / "my-dataset.failed" / "report.json").exists()
    capsys.readouterr()


def test_a_local_looking_dataset_path_is_never_sent_to_the_hub(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    rc = main(["data", "validate", "--root", "data/my-dataset", "--out", "runs/validated"])
    line = _error_line(capsys)
    assert time.monotonic() - started < 10  # no hub lookup (offline, that ends in a ConnectionError)
    assert rc == 1
    assert f"dataset folder data/my-dataset does not exist (looked in {tmp_path / 'data' / 'my-dataset'})" in line
    assert "hf://data/my-dataset" in line and "Hugging Face" in line and "ConnectionError" not in line


@pytest.mark.parametrize("key,guess", [
    ("train.lrr", "train.lr"),
    ("train.learning_rate", "train.lr"),  # diffusers' name for it
    ("trainn.lr", "train.lr"),
    ("data.capton_column", "data.caption_column"),
    ("lr", "toy_base.lr or train.lr"),
])
def test_an_unknown_override_key_says_did_you_mean(capsys, key, guess):
    assert main(["config", "show", "-S", f"{key}=1e-5"]) == 2
    line = _error_line(capsys)
    assert f"did you mean {guess}?" in line and "allowed keys here:" in line


def test_storage_without_credentials_says_what_to_set(tmp_path, capsys, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups from a laptop
    monkeypatch.chdir(tmp_path)
    rc = main(["registry", "list", "--registry", "s3://YOUR-BUCKET/registry",
               "-S", "storage.endpoint_url=http://127.0.0.1:9"])
    line = _error_line(capsys)
    assert rc == 2, line
    assert "bucket 'YOUR-BUCKET'" in line and "endpoint http://127.0.0.1:9" in line
    assert "no usable AWS credentials" in line and "AWS_ACCESS_KEY_ID" in line and "storage.endpoint_url" in line
    assert "--registry ./registry" in line  # or no S3 at all


def test_an_endpoint_that_refuses_connections_is_named_with_the_setting(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.chdir(tmp_path)
    rc = main(["data", "validate", "--root", "s3://my-bucket/my-dataset", "--out", "runs/validated",
               "-S", "storage.endpoint_url=http://127.0.0.1:9", "-S", "storage.retry_deadline=0.1",
               "-S", "storage.max_attempts=1", "-S", "storage.connect_timeout=1"])
    line = _error_line(capsys)
    assert rc == 1, line
    assert "endpoint http://127.0.0.1:9 cannot be reached" in line and "check storage.endpoint_url" in line
    assert "bucket 'my-bucket'" in line


def test_access_denied_names_the_bucket_and_the_credentials(monkeypatch):
    from botocore.exceptions import ClientError

    from t2iops.storage import StorageError, s3_client
    from t2iops.storage.client import named_errors

    client = s3_client(load_config(overrides=["storage.endpoint_url=http://127.0.0.1:9"]))
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                          "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    with pytest.raises(StorageError) as info:
        with named_errors(client, "read", "team-bucket", "runs/cache/cache.json"):
            raise denied  # what botocore raises for a 403 from the store
    message = str(info.value)
    assert "bucket 'team-bucket'" in message and "endpoint http://127.0.0.1:9" in message
    assert "access denied" in message and "AWS_PROFILE" in message
