"""Storage mistakes against the loopback S3 server each get one line naming the endpoint, the
bucket and what to set: a dataset root or a registry in a bucket that does not exist."""
from __future__ import annotations

import pytest

from t2iops.cli import main

pytestmark = pytest.mark.s3


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(err) == 1, err
    return err[0]


def test_a_dataset_root_the_endpoint_answers_404_for_names_the_endpoint(s3_bucket, tmp_path, capsys):
    endpoint, bucket = s3_bucket
    opts = ["-S", f"storage.endpoint_url={endpoint}", "-S", f"storage.cache_dir={tmp_path / 'cache'}"]
    root = f"s3://{bucket}/no-such-dataset"
    rc = main(["data", "validate", "--root", root, "--out", str(tmp_path / "validated"), *opts])
    line = _error_line(capsys)
    assert rc == 1, line
    assert f"dataset root {root} is empty or does not exist at endpoint {endpoint}" in line
    assert "storage.endpoint_url" in line

    rc = main(["data", "validate", "--root", "s3://no-such-bucket-t2iops/my-dataset", "--out",
               str(tmp_path / "validated"), *opts])
    line = _error_line(capsys)
    assert rc == 2, line  # the configuration names a bucket the store does not have
    assert f"bucket 'no-such-bucket-t2iops' does not exist at endpoint {endpoint}" in line
    assert "check the bucket name and storage.endpoint_url" in line
    assert not (tmp_path / "validated").exists() and not (tmp_path / "validated.failed").exists()


def test_a_registry_in_a_missing_bucket_names_endpoint_bucket_and_the_alternatives(s3_server, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["registry", "list", "--registry", "s3://YOUR-BUCKET/registry", "-S", f"storage.endpoint_url={s3_server}"])
    line = _error_line(capsys)
    assert rc == 2, line  # a usage error: nothing was done
    assert f"bucket 'YOUR-BUCKET' does not exist at endpoint {s3_server}" in line
    assert "storage.endpoint_url" in line and "--registry ./registry" in line
