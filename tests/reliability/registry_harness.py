"""A model registry under attack, in a folder or on the loopback S3 server, driven through the real
CLI (``t2iops.cli.main``). Versions are published by the project's publish step (the
``publish_version`` fixture of tests/conftest.py); the attacker's writes go straight to the
store, past every t2iops function: plain file writes, or boto3 calls on the S3 server."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from t2iops.cli import main
from t2iops.config import load_config

MODEL = "t2i-adapter"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


class Registry:
    def __init__(self, kind: str, uri: str, overrides: list[str], tmp_path: Path, capsys, publish_version,
                 endpoint: Optional[str] = None):
        self.kind, self.uri, self.overrides = kind, uri, overrides
        self.capsys, self._publish, self.endpoint = capsys, publish_version, endpoint
        self.cfg = load_config(None, [o for o in overrides if o != "-S"])
        self.params = tmp_path / "empty-params.yaml"
        self.params.write_text("{}\n")
        self.root = f"{uri}/{MODEL}" if kind == "s3" else str(Path(uri) / MODEL)
        if kind == "s3":
            import boto3

            self.bucket, prefix = uri[len("s3://"):].split("/", 1)
            self.prefix = f"{prefix}/{MODEL}/"
            self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    @property
    def location(self) -> list[str]:
        return ["--registry", self.uri, "--params", str(self.params), *self.overrides]

    def publish(self, *versions: str, **metrics) -> None:
        for version in versions:
            self._publish(self.uri, version, cfg=self.cfg, **metrics)

    def cli(self, *args: str, registry: Optional[str] = None) -> Result:
        """``t2iops registry ARGS`` against this registry (or ``registry``), output captured."""
        self.capsys.readouterr()
        location = self.location if registry is None else ["--registry", registry, *self.location[2:]]
        rc = main(["registry", *args, *location])
        captured = self.capsys.readouterr()
        return Result(rc, captured.out, captured.err)

    # -- the attacker: raw reads and writes below <registry>/<model>/ ---------------------------
    def put(self, name: str, data: bytes) -> None:
        if self.kind == "s3":
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)
        else:
            path = Path(self.root, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def get(self, name: str) -> Optional[bytes]:
        if self.kind == "s3":
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
            except self.client.exceptions.NoSuchKey:
                return None
        path = Path(self.root, name)
        return path.read_bytes() if path.is_file() else None

    def delete(self, name: str) -> None:
        if self.kind == "s3":
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)
        else:
            Path(self.root, name).unlink()

    def stored_name(self, version: str, rel: str) -> str:
        """Where the bytes of ``rel`` of ``version`` live (on S3: under the manifest's ``_v/<id>/``)."""
        if self.kind == "s3":
            manifest = json.loads(self.get(f"{version}/_manifest.json"))
            return f"{version}/_v/{manifest['version']}/{rel}"
        return f"{version}/{rel}"

    def pointer(self) -> Optional[dict]:
        data = self.get("champion.json")
        return None if data is None else json.loads(data)

    def history(self) -> list[dict]:
        names = sorted(self.names("champion-history/"))
        return [json.loads(self.get(n)) for n in names]

    def names(self, under: str = "") -> list[str]:
        if self.kind == "s3":
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self.prefix + under)
            return sorted(o["Key"][len(self.prefix):] for p in pages for o in p.get("Contents", []))
        base = Path(self.root)
        return sorted(p.relative_to(base).as_posix() for p in (base / under).rglob("*") if p.is_file()) \
            if (base / under).exists() else []

    def snapshot(self) -> dict[str, str]:
        """Every object under the registry prefix with the sha256 of its bytes (and on S3 its ETag)."""
        out = {}
        if self.kind == "s3":
            top = self.prefix[: -len(MODEL) - 1]
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=top):
                for obj in page.get("Contents", []):
                    body = self.client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                    out[obj["Key"]] = f"{hashlib.sha256(body).hexdigest()} {obj['ETag']} {obj['LastModified']}"
            return out
        base = Path(self.uri)
        for path in sorted(base.rglob("*")):
            if path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[path.relative_to(base).as_posix()] = f"{digest} {path.stat().st_mtime_ns}"
        return out


@pytest.fixture(params=["folder", pytest.param("s3", marks=pytest.mark.s3)])
def registry(request, tmp_path, capsys, publish_version) -> Registry:
    """An empty registry (a folder, or a prefix of a fresh bucket on the loopback S3 server)."""
    if request.param == "folder":
        return Registry("folder", str(tmp_path / "registry"), [], tmp_path, capsys, publish_version)
    # The loopback server runs in this process: its request log would land in the CLI's stderr.
    quiet = logging.getLogger("werkzeug")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    request.addfinalizer(lambda: quiet.setLevel(level))
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return Registry("s3", f"s3://{bucket}/registry", ["-S", f"storage.endpoint_url={endpoint}"], tmp_path, capsys,
                    publish_version, endpoint)


def forge(record: dict, **changes) -> bytes:
    return json.dumps({**record, **changes}).encode()
