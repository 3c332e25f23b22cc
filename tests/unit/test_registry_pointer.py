"""The champion pointer in a folder and on the loopback S3 server: promote, rollback, the
compare-and-swap, a writer that died between its two writes, and concurrent promotes (real
processes) leaving one valid pointer and a gapless history. The same on S3:
tests/integration/test_registry_s3.py."""
from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

import pytest

from t2iops.cli import main
from t2iops.config import load_config
from t2iops.errors import UsageError
from t2iops.registry import pointer
from t2iops.registry.moves import move_champion
from t2iops.registry.pointer import PromotionConflict, current_champion, history, read_pointer
from t2iops.registry.versions import RegistryError

MODEL = "t2i-adapter"


def _check_consistent(registry: str, cfg) -> list[pointer.ChampionRecord]:
    """History 1..n without gaps, every stack consistent, the pointer equal to the last record."""
    records = history(registry, MODEL, cfg)
    assert [r.generation for r in records] == list(range(1, len(records) + 1))
    for before, after in zip([None, *records], records):
        assert after.previous == (before.version if before else None)
        assert after.version == after.stack[-1]
    assert read_pointer(registry, MODEL, cfg) == records[-1]
    return records


def test_promote_rollback_and_compare_and_swap_in_a_folder(publish_version, tmp_path):
    registry, cfg = str(tmp_path / "registry"), load_config(None)
    for v in ("v1", "v2", "v3"):
        publish_version(registry, v)
    assert current_champion(registry, MODEL, cfg) is None
    assert move_champion(registry, MODEL, cfg, "promote", "v1", expect_champion=None)[0].generation == 1
    move_champion(registry, MODEL, cfg, "promote", "v2")
    move_champion(registry, MODEL, cfg, "promote", "v3", reason="better edge F1")
    record, moved = move_champion(registry, MODEL, cfg, "promote", "v3")
    assert (record.generation, moved) == (3, False)  # already the champion: nothing written
    with pytest.raises(PromotionConflict, match="the champion is v3, not v2 as expected"):
        move_champion(registry, MODEL, cfg, "promote", "v1", expect_champion="v2")
    rolled, _ = move_champion(registry, MODEL, cfg, "rollback")
    assert (rolled.version, rolled.previous, rolled.stack) == ("v2", "v3", ["v1", "v2"])
    assert move_champion(registry, MODEL, cfg, "rollback")[0].version == "v1"
    with pytest.raises(UsageError, match="nothing to roll back to: .* has only v1"):
        move_champion(registry, MODEL, cfg, "rollback")
    with pytest.raises(RegistryError, match="'v9' is not published"):
        move_champion(registry, MODEL, cfg, "promote", "v9")
    records = _check_consistent(registry, cfg)
    assert [(r.action, r.version) for r in records] == [
        ("promote", "v1"), ("promote", "v2"), ("promote", "v3"), ("rollback", "v2"), ("rollback", "v1")]
    pointer_file = json.loads((Path(registry) / MODEL / "champion.json").read_text())
    assert pointer_file["uri"] == str(Path(registry) / MODEL / "v1") and records[2].reason == "better edge F1"


def test_a_pointer_left_behind_by_a_dead_writer_is_repaired(publish_version, tmp_path, capsys):
    registry, cfg = str(tmp_path / "registry"), load_config(None)
    for v in ("v1", "v2"):
        publish_version(registry, v)
    first, _ = move_champion(registry, MODEL, cfg, "promote", "v1")
    # The writer of generation 2 created its history record and died before the pointer.
    orphan = pointer.ChampionRecord(2, "promote", "v2", first.uri.replace("v1", "v2"), "v1", ["v1", "v2"], first.time)
    assert pointer._store(registry, MODEL, cfg).create(pointer._history_name(2), orphan.to_bytes())
    assert read_pointer(registry, MODEL, cfg).version == "v1"
    assert current_champion(registry, MODEL, cfg).version == "v2"
    assert main(["registry", "show", "champion", "--registry", registry, "--params", str(_empty(tmp_path))]) == 0
    assert "champion.json is behind the history (generation 1 < 2)" in capsys.readouterr().out
    pointer.repair_pointer(registry, MODEL, cfg)
    assert read_pointer(registry, MODEL, cfg).version == "v2"
    _check_consistent(registry, cfg)


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty-params.yaml"
    path.write_text("{}\n")
    return path


def _promote_in_a_process(args):
    registry, version = args
    record, _ = move_champion(registry, MODEL, load_config(None), "promote", version)
    return record.generation


def test_concurrent_promotes_in_processes_leave_a_valid_pointer(publish_version, tmp_path):
    registry, cfg = str(tmp_path / "registry"), load_config(None)
    versions = [f"v{i}" for i in range(6)]
    for v in versions:
        publish_version(registry, v)
    with multiprocessing.get_context("fork").Pool(len(versions)) as pool:
        generations = pool.map(_promote_in_a_process, [(registry, v) for v in versions])
    assert sorted(generations) == list(range(1, 7))  # each claimed its own generation
    records = _check_consistent(registry, cfg)
    assert sorted(r.version for r in records) == versions


def test_compare_and_swap_lets_exactly_one_of_two_racing_promotes_win(publish_version, tmp_path):
    registry, cfg = str(tmp_path / "registry"), load_config(None)
    for v in ("base", "a", "b"):
        publish_version(registry, v)
    move_champion(registry, MODEL, cfg, "promote", "base")
    outcomes = {}

    def race(version):
        try:
            move_champion(registry, MODEL, cfg, "promote", version, expect_champion="base")
            outcomes[version] = "promoted"
        except PromotionConflict:
            outcomes[version] = "conflict"

    threads = [threading.Thread(target=race, args=(v,)) for v in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == ["conflict", "promoted"]
    winner = next(v for v, o in outcomes.items() if o == "promoted")
    assert [r.version for r in _check_consistent(registry, cfg)] == ["base", winner]
