"""The data component's sources against real tools: a git + DVC repository whose remote is the
loopback S3 server, read at two revisions through dvc.api.DVCFileSystem; plain folders; errors."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from t2iops import storage
from t2iops.config import load_config
from t2iops.errors import DataError, UsageError
from t2iops.pipelines.sources import pull_dataset



def _run(cmd, cwd):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", "DVC_NO_ANALYTICS": "1"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"
    return res.stdout


def _write_dataset(root: Path, captions: list[str]) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(captions):
        (root / "images" / f"{i}.txt").write_text(f"pixels of {text}")
        rows.append({"id": str(i), "image": f"images/{i}.txt", "text": text})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, s3_server):
    import boto3

    endpoint, bucket = s3_server, "t2iops-dvc-source"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    repo = tmp_path_factory.mktemp("dvc") / "repo"
    repo.mkdir()
    # dvc's Python API in this process: the same code as the dvc CLI without a start-up per call.
    from dvc.repo import Repo

    _run(["git", "init", "-q", "-b", "main"], repo)
    dvc = Repo.init(str(repo))
    with dvc.config.edit() as conf:
        conf["remote"]["store"] = {"url": f"s3://{bucket}/dvcstore", "endpointurl": endpoint}
        conf["core"]["remote"] = "store"
    for tag, captions in (("v1", ["red circle", "blue circle"]), ("v2", ["red circle", "blue circle", "green circle"])):
        _write_dataset(repo / "data" / "set", captions)
        dvc.add(str(repo / "data" / "set"))
        assert dvc.push() >= 1
        _run(["git", "add", "-A"], repo)
        _run(["git", "commit", "-q", "-m", tag], repo)
        _run(["git", "tag", tag], repo)
    dvc.close()
    # The local cache is gone: every byte read below comes from the S3 remote.
    _run(["rm", "-rf", ".dvc/cache", "data/set"], repo)
    return repo, endpoint, bucket


@pytest.mark.s3
@pytest.mark.slow
def test_dvc_source_reads_each_revision_from_the_s3_remote(dvc_repo, tmp_path):
    repo, endpoint, _ = dvc_repo
    cfg = load_config(None, [f"storage.endpoint_url={endpoint}"])
    old = pull_dataset("dvc", str(tmp_path / "v1"), cfg, dvc_repo=str(repo), dvc_rev="v1", dvc_path="data/set")
    new = pull_dataset("dvc", str(tmp_path / "v2"), cfg, dvc_repo=str(repo), dvc_rev="main", dvc_path="data/set")
    assert len((tmp_path / "v1" / "metadata.jsonl").read_text().splitlines()) == 2
    assert len((tmp_path / "v2" / "metadata.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "v2" / "images" / "2.txt").read_text() == "pixels of green circle"
    tags = _run(["git", "rev-parse", "v1", "main"], repo).split()
    assert [old["commit"], new["commit"]] == tags
    manifest = storage.read_manifest(tmp_path / "v1")
    assert manifest["rev"] == "v1" and manifest["commit"] == old["commit"]
    assert set(manifest["files"]) == {"metadata.jsonl", "images/0.txt", "images/1.txt"}
    # Errors name the problem and publish nothing.
    with pytest.raises(DataError, match="no-such-dir"):
        pull_dataset("dvc", str(tmp_path / "x"), cfg, dvc_repo=str(repo), dvc_rev="main", dvc_path="no-such-dir")
    with pytest.raises(DataError, match="nope"):
        pull_dataset("dvc", str(tmp_path / "y"), cfg, dvc_repo=str(repo), dvc_rev="nope", dvc_path="data/set")
    with pytest.raises(UsageError, match="dvc_rev"):
        pull_dataset("dvc", str(tmp_path / "z"), cfg, dvc_repo=str(repo), dvc_rev="", dvc_path="data/set")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1", "v2"]


@pytest.mark.s3
def test_uri_source_copies_an_s3_prefix(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = load_config(None, [f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'cache'}"])
    _write_dataset(tmp_path / "src", ["red circle"])
    storage.upload_dir(tmp_path / "src", f"s3://{bucket}/sets/a", cfg)
    info = pull_dataset(f"s3://{bucket}/sets/a", str(tmp_path / "out"), cfg)
    assert info == {"source": f"s3://{bucket}/sets/a"}
    assert (tmp_path / "out" / "images" / "0.txt").read_text() == "pixels of red circle"
    with pytest.raises(DataError, match="nothing found"):
        pull_dataset(f"s3://{bucket}/sets/missing", str(tmp_path / "out2"), cfg)
