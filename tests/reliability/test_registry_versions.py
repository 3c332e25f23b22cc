"""What promote serves is what was published, and every registry command fails cleanly: promote and
rollback verify every file of the version against its manifest before the pointer moves; a damaged
version is listed as such without hiding the others; a missing path, a file or an empty registry
is one line and exit 2; retiring a version keeps it out of the champion's seat for good; --json
on every command, failures included. The real CLI, in a folder and on the loopback S3 server."""
from __future__ import annotations

import json

import pytest
from registry_harness import MODEL, registry  # noqa: F401  (registry: the fixture)

TAMPERING = {
    # name: (what the attacker does to version v2, what the refusal must name)
    "one-byte-in-the-weights": (lambda reg: reg.put(reg.stored_name("v2", "adapter.onnx"), b"onnX"),
                                "adapter.onnx: sha256"),
    "weights-truncated": (lambda reg: reg.put(reg.stored_name("v2", "adapter.onnx"), b"on"),
                          "adapter.onnx: 2 bytes, the manifest records 4"),
    "weights-deleted": (lambda reg: reg.delete(reg.stored_name("v2", "adapter.onnx")),
                        "adapter.onnx is missing: the manifest lists it"),
    "metrics-tampered": (lambda reg: reg.put(reg.stored_name("v2", "metrics.json"),
                                             b'{"edge_f1": {"with_adapter": 0.99}}'), "metrics.json"),
    "manifest-garbage": (lambda reg: reg.put("v2/_manifest.json", b"\x00garbage"), "_manifest.json is not valid JSON"),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_promote_refuses_a_version_that_does_not_match_its_manifest_and_moves_nothing(registry, tampering):
    attack, named = TAMPERING[tampering]
    registry.publish("v1", "v2")
    assert registry.cli("promote", "v1").rc == 0
    before = (registry.pointer(), registry.names("champion-history/"))
    attack(registry)
    refused = registry.cli("promote", "v2")
    assert refused.rc == 6 and len(refused.lines) == 1, refused.err
    assert named in refused.err and "nothing was changed" in refused.err
    assert (registry.pointer(), registry.names("champion-history/")) == before
    checked = registry.cli("verify", "v2", "--json")
    assert checked.rc == 6 and named in " ".join(checked.json["problems"])
    assert registry.cli("verify").rc == 0  # the champion itself is whole


def test_rollback_verifies_the_version_it_lands_on(registry):
    registry.publish("v1", "v2")
    assert registry.cli("promote", "v1").rc == 0 and registry.cli("promote", "v2").rc == 0
    good = registry.get(registry.stored_name("v1", "adapter.onnx"))
    registry.put(registry.stored_name("v1", "adapter.onnx"), b"ONNX")
    refused = registry.cli("rollback")
    assert refused.rc == 6 and "v1" in refused.err and "adapter.onnx: sha256" in refused.err
    assert registry.pointer()["version"] == "v2" and len(registry.history()) == 2
    registry.put(registry.stored_name("v1", "adapter.onnx"), good)
    back = registry.cli("rollback", "--json")
    assert back.rc == 0 and back.json["champion"] == "v1" and back.json["verified"]["files"] == 5


def test_the_history_records_what_was_verified_and_serving_refuses_a_version_changed_since(registry):
    registry.publish("v1")
    moved = registry.cli("promote", "v1", "--json").json
    assert registry.history()[-1]["manifest_sha256"] == moved["verified"]["manifest_sha256"]
    manifest = json.loads(registry.get("v1/_manifest.json"))
    manifest["files"]["adapter.onnx"] = {"bytes": 4, "sha256": "0" * 64}  # files and manifest changed together
    registry.put("v1/_manifest.json", json.dumps(manifest).encode())
    shown = registry.cli("show", "champion", "--json")
    assert shown.rc == 6 and "_manifest.json changed since champion-history/00000001.json verified it" in shown.err
    assert shown.json["ok"] is False and shown.json["exit_code"] == 6


# In a folder only: on S3 readers reach files through the manifest alone, so an unlisted key is never read.
@pytest.mark.parametrize("registry", ["folder"], indirect=True)
def test_a_version_folder_with_a_file_its_manifest_does_not_list_is_refused(registry):
    registry.publish("v1")
    registry.put("v1/extra.onnx", b"payload")
    refused = registry.cli("promote", "v1")
    assert refused.rc == 6 and "v1/extra.onnx is not in the manifest" in refused.err


def test_list_reports_and_skips_a_damaged_version_and_lists_the_others(registry):
    registry.publish("v1", "v2", "v3")
    assert registry.cli("promote", "v1").rc == 0
    registry.put("v2/_manifest.json", b"{truncated")
    registry.put(registry.stored_name("v3", "metrics.json"), b'{"gate": {"passed": true}}')
    listed = registry.cli("list")
    assert listed.rc == 0
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line
            for line in listed.out.splitlines()[1:-1]}
    assert set(rows) == {"v1", "v2", "v3"} and "passed" in rows["v1"] and "BROKEN" not in rows["v1"]
    assert "BROKEN" in rows["v2"] and "not valid JSON" in rows["v2"]
    assert "BROKEN" in rows["v3"] and "metrics.json" in rows["v3"]  # its size or sha256, named
    assert sum("skipped" in line for line in listed.lines) == 2
    document = registry.cli("list", "--json").json
    assert [v["version"] for v in document["versions"]] == ["v1", "v2", "v3"] and document["champion"] == "v1"
    assert [("error" in v) for v in document["versions"]] == [False, True, True] and len(document["problems"]) == 2


COMMANDS = [("list",), ("show", "champion"), ("compare", "v1"), ("promote", "v1"), ("rollback",),
            ("retire", "v1"), ("verify",), ("repair",)]


@pytest.mark.parametrize("place", ["missing", "a-file", "empty"])
def test_every_command_on_a_missing_path_a_file_or_an_empty_registry_says_so_in_one_line(registry, place, tmp_path):
    if registry.kind == "s3":
        target = {"missing": "s3://no-such-bucket-t2iops/registry", "empty": registry.uri,
                  "a-file": registry.uri + "/blob"}[place]
        if place == "a-file":
            registry.client.put_object(Bucket=registry.bucket, Key="registry/blob", Body=b"x")
        expected = {"missing": "bucket 'no-such-bucket-t2iops' does not exist", "a-file": "is an object, not a prefix",
                    "empty": "holds no published version of model 't2i-adapter'"}[place]
    else:
        target = {"missing": tmp_path / "nowhere", "a-file": tmp_path / "file.txt", "empty": tmp_path / "empty"}[place]
        (tmp_path / "file.txt").write_text("x")
        (tmp_path / "empty" / MODEL).mkdir(parents=True)
        expected = {"missing": f"{target} does not exist", "a-file": f"{target} is a file, not a folder",
                    "empty": "holds no published version of model 't2i-adapter'"}[place]
    for command in COMMANDS:
        extra = ("--out", str(tmp_path / "decision")) if command[0] == "compare" else ()
        result = registry.cli(*command, *extra, registry=str(target))
        assert result.rc == 2, (command, result.err)
        assert len(result.lines) == 1 and expected in result.err, (command, result.err)
        assert "Traceback" not in result.err and result.out == ""
        as_json = registry.cli(*command, "--json", registry=str(target))
        assert as_json.rc == 2 and as_json.json["exit_code"] == 2 and expected in as_json.json["error"], command


def test_a_no_op_promote_says_nothing_moved_and_is_not_mistaken_for_the_last_record(registry):
    registry.publish("v1", "v2")
    for args in (("promote", "v1"), ("promote", "v2"), ("rollback",)):
        assert registry.cli(*args).rc == 0
    again = registry.cli("promote", "v1", "--json")
    assert again.rc == 0 and again.json["moved"] is False and again.json["action"] == "none"
    assert again.json["previous"] is None and "already the champion" in again.json["message"]
    assert len(registry.history()) == 3


def test_a_retired_version_is_kept_but_never_champion_again(registry):
    registry.publish("v1", "v2", "v3")
    for version in ("v1", "v2", "v3"):
        assert registry.cli("promote", version).rc == 0
    refused = registry.cli("retire", "v3")
    assert refused.rc == 2 and "is the champion" in refused.err
    retired = registry.cli("retire", "v2", "--reason", "leaks training images", "--json")
    assert retired.rc == 0 and retired.json["changed"] is True
    assert retired.json["record"]["reason"] == "leaks training images"
    assert registry.cli("retire", "v2", "--json").json["changed"] is False  # once; the first record stays
    back = registry.cli("rollback", "--json")  # passes over v2 to v1
    assert back.rc == 0 and back.json["champion"] == "v1" and back.json["skipped_retired"] == ["v2"]
    refused = registry.cli("promote", "v2")
    assert refused.rc == 2 and "version 'v2' is retired" in refused.err and "leaks training images" in refused.err
    assert registry.pointer()["version"] == "v1"
    listed = registry.cli("list", "--json").json
    assert [(v["version"], v["retired"]) for v in listed["versions"]] == [("v1", False), ("v2", True), ("v3", False)]
    assert registry.cli("show", "v2", "--json").json["retired"]["reason"] == "leaks training images"
    assert registry.cli("promote", "v3").rc == 0 and registry.cli("rollback", "--json").json["champion"] == "v1"


def test_every_registry_command_speaks_json(registry, tmp_path):
    registry.publish("v1", "v2")
    runs = [("promote", "v1"), ("list",), ("show", "champion"), ("show", "v1", "--history"),
            ("compare", "v2", "--out", str(tmp_path / "decision")), ("promote", "v2"), ("rollback",),
            ("retire", "v2"), ("verify", "--all"), ("repair",)]
    for args in runs:
        result = registry.cli(*args, "--json")
        assert result.rc in (0, 4), (args, result.err)
        document = result.json
        assert isinstance(document, dict), args
    assert registry.cli("compare", "v2", "--json", "--out", str(tmp_path / "d2")).json["outcome"] in ("keep", "promote")
    failure = registry.cli("promote", "v9", "--json")
    assert failure.rc == 2 and failure.json == {"ok": False, "command": "promote", "exit_code": 2,
                                                "error": failure.json["error"]}
    assert "'v9' is not published" in failure.json["error"]
