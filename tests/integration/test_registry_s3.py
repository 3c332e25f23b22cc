"""The champion pointer on the loopback S3 server: concurrent promotes from threads go through
S3's conditional writes (If-None-Match / If-Match) and leave one valid pointer and a gapless
history; S3 refuses to overwrite a history record; rollback with a compare-and-swap."""
from __future__ import annotations

import threading

import pytest

from t2iops.cli import main
from t2iops.config import load_config
from t2iops.registry import pointer
from t2iops.registry.moves import move_champion
from t2iops.registry.pointer import read_pointer

MODEL = "t2i-adapter"


def _check_consistent(registry, cfg):
    records = pointer.history(registry, MODEL, cfg)
    assert [r.generation for r in records] == list(range(1, len(records) + 1))
    for before, after in zip([None, *records], records):
        assert after.previous == (before.version if before else None)
    assert read_pointer(registry, MODEL, cfg) == records[-1]
    return records


@pytest.mark.s3
def test_concurrent_promotes_on_s3_use_conditional_writes(publish_version, s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    registry = f"s3://{bucket}/registry"
    cfg = load_config(None, [f"storage.endpoint_url={endpoint}"])
    versions = [f"v{i}" for i in range(6)]
    for v in versions:
        publish_version(registry, v, cfg=cfg)
    errors = []

    def promote(version):
        try:
            move_champion(registry, MODEL, cfg, "promote", version)
        except Exception as exc:  # reported below: a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    records = _check_consistent(registry, cfg)
    assert sorted(r.version for r in records) == versions
    store = pointer._store(registry, MODEL, cfg)
    assert store.create(pointer._history_name(1), b"{}") is False  # S3 refused to overwrite history
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    assert main(["registry", "rollback", "--registry", registry, "--params", str(params),
                 "-S", f"storage.endpoint_url={endpoint}", "--expect-champion", records[-1].version]) == 0
    assert read_pointer(registry, MODEL, cfg).version == records[-2].version
