"""No credential reaches a log (at any verbosity), an error, a manifest, lineage or a compiled
pipeline: sentinel credentials in the environment and in a dvc_repo URL, scanned for everywhere."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from t2iops import redact
from t2iops.config import load_config
from t2iops.errors import DataError
from t2iops.pipelines.sources import fetch_dvc

SENTINELS = {
    "AWS_ACCESS_KEY_ID": "AKIASENTINELKEY00001",
    "AWS_SECRET_ACCESS_KEY": "SENTINELsecretKEY0000000000000000000000002",
    "AWS_SESSION_TOKEN": "SENTINELsessionTOKEN0000000000000000000000003",
}
URL_TOKEN = "ghpSENTINELurlTOKEN0004"


def _scan(texts: dict[str, bytes]) -> list[str]:
    needles = [v.encode() for v in SENTINELS.values()] + [URL_TOKEN.encode()]
    return [name for name, data in texts.items() for n in needles if n in data]


def _files_below(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.s3
@pytest.mark.slow  # four CLI processes, ~30 s on the shared 2-core machine
def test_verbose_stages_leak_no_credential(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    from t2iops.data.synth import synthesize

    local = tmp_path / "work" / "circles"
    synthesize(str(local), load_config(None, ["data.synth.count=4", "data.synth.resolution=32"]))
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for p in local.rglob("*"):
        if p.is_file():
            client.upload_file(str(p), bucket, f"ds/{p.relative_to(local).as_posix()}")
    env = {**os.environ, **SENTINELS, "T2IOPS_CACHE": str(tmp_path / "work" / "cache")}
    common = ["-v", "-S", f"storage.endpoint_url={endpoint}", "-S", f"storage.cache_dir={tmp_path / 'work' / 'cache'}"]
    runs = [
        ["data", "validate", "--root", f"s3://{bucket}/ds", "--out", f"s3://{bucket}/verdict", *common],
        ["data", "synth", "--out", f"s3://{bucket}/synth", "-S", "data.synth.count=2",
         "-S", "data.synth.resolution=32", *common],
        ["pipeline", "compile", "-o", str(tmp_path / "work" / "pipeline.yaml"), "-v",
         "-S", f"model.base_model=s3://{bucket}/base", *common],
        ["data", "validate", "--root", f"s3://{bucket}/missing", "--out", str(tmp_path / "work" / "v2"), *common],
    ]
    outputs: dict[str, bytes] = {}
    for i, args in enumerate(runs):
        run = subprocess.run([sys.executable, "-m", "t2iops.cli", *args], env=env, capture_output=True,
                             timeout=300, cwd=tmp_path / "work")
        outputs[f"run{i}.stdout"] = run.stdout
        outputs[f"run{i}.stderr"] = run.stderr
        assert (run.returncode == 0) == (i < 3), run.stderr[-2000:]
    assert b"DEBUG" in outputs["run0.stderr"], "verbose logging was on"
    assert (tmp_path / "work" / "pipeline.yaml").exists()
    objects = {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
               for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert any(k.startswith("verdict/") for k in objects) and any(k.startswith("synth/") for k in objects)
    leaks = _scan({**outputs, **_files_below(tmp_path / "work"), **objects})
    assert leaks == []


@pytest.mark.slow  # dvc's import and clone attempt, ~20-40 s on the shared 2-core machine
def test_a_token_in_the_dvc_repo_url_never_shows(tmp_path, monkeypatch):
    for k, v in SENTINELS.items():
        monkeypatch.setenv(k, v)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    redact.install_logging_redaction()
    try:
        repo = f"https://user:{URL_TOKEN}@127.0.0.1:9/org/data.git?access_token={URL_TOKEN}"
        with pytest.raises(DataError) as exc:
            fetch_dvc(repo, "data", "main", str(tmp_path / "pulled"), load_config(None, []))
        logging.getLogger("t2iops.test").info("pulling %s failed: %s", repo, exc.value)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert "***@127.0.0.1:9/org/data.git" in str(exc.value)
    assert _scan({"error": str(exc.value).encode(), "log": stream.getvalue().encode(),
                  **_files_below(tmp_path)}) == []
    assert "***@127.0.0.1" in stream.getvalue()


def test_redact_url_and_text():
    assert redact.redact_url("https://user:tok@host/r.git") == "https://***@host/r.git"
    assert redact.redact_url("https://tok@host/r.git?ref=main&token=abc") == "https://***@host/r.git?ref=main&token=***"
    assert redact.redact_url("s3://bucket/key") == "s3://bucket/key"
    signed = ("GET /b/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIAXXXX%2F2026&X-Amz-Security-Token=FQoG123 "
              "headers={'Authorization': 'AWS4-HMAC-SHA256 Credential=AKIAXXXX/2026, Signature=ab12', "
              "'X-Amz-Security-Token': 'FQoG123'}")
    out = redact.redact_text(signed)
    assert "AKIAXXXX" not in out and "FQoG123" not in out and "ab12" not in out
    os.environ["AWS_SECRET_ACCESS_KEY"], saved = "SENTINELvalue99", os.environ.get("AWS_SECRET_ACCESS_KEY")
    try:
        assert redact.redact_text("secret is SENTINELvalue99.") == "secret is ***."
    finally:
        if saved is None:
            os.environ.pop("AWS_SECRET_ACCESS_KEY")
        else:
            os.environ["AWS_SECRET_ACCESS_KEY"] = saved
