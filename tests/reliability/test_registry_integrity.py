"""The champion pointer cannot be forged or stuck: champion.json is checked against the champion
history, a disagreeing pointer is named and never served, and the next promote, rollback or
`registry repair` rewrites it from the history; damaged history records are named and passed
over; a repair and promotes racing in two processes leave one sound pointer. Every step drives
the real CLI, in a folder and on the loopback S3 server."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from registry_harness import forge, registry  # noqa: F401  (registry: the fixture)

FORGERIES = {
    # name: (the forged champion.json from the genuine one, what the report must name)
    "uri-in-another-bucket": (lambda r, root: forge(r, uri="s3://another-bucket/model", generation=99),
                              "uri 's3://another-bucket/model' is not the location of version 'v1'"),
    "uri-etc": (lambda r, root: forge(r, uri="/etc", generation=99), "uri '/etc' is not the location of version 'v1'"),
    "unknown-version": (lambda r, root: forge(r, version="ghost", stack=["ghost"], uri=f"{root}/ghost"),
                        "names version 'ghost', which is not published"),
    "generation-ahead": (lambda r, root: forge(r, generation=99), "generation 99 is ahead of the champion history"),
    "truncated": (lambda r, root: json.dumps(r).encode()[:40], "champion.json is not a champion record"),
    "garbage": (lambda r, root: b"\x00\xff not json at all", "champion.json is not a champion record"),
}


def _located(registry, version: str) -> str:
    return f"{registry.root}/{version}"


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_forged_pointer_is_named_never_served_and_rewritten_by_promote_rollback_and_repair(registry, forgery):
    make, named = FORGERIES[forgery]
    registry.publish("v1", "v2")
    assert registry.cli("promote", "v1").rc == 0
    forged = make(registry.pointer(), registry.root)
    registry.put("champion.json", forged)

    shown = registry.cli("show", "champion", "--json")
    assert shown.rc == 0, shown.err
    assert (shown.json["version"], shown.json["uri"], shown.json["generation"]) == ("v1", _located(registry, "v1"), 1)
    assert shown.json["pointer"]["state"] == "bad" and named in " ".join(shown.json["pointer"]["problems"])
    assert "warning: champion.json" in shown.err
    checked = registry.cli("verify", "--json")
    assert checked.rc == 6 and named in " ".join(checked.json["problems"]), checked.out

    moved = registry.cli("promote", "v2", "--json")
    assert moved.rc == 0 and moved.json["moved"] is True and moved.json["generation"] == 2, moved.err
    assert moved.json["repaired_pointer"]["state"] == "bad"
    assert registry.pointer() == {**registry.history()[-1], "uri": _located(registry, "v2")}
    assert registry.cli("verify").rc == 0

    registry.put("champion.json", forged)
    back = registry.cli("rollback", "--json")
    assert back.rc == 0 and (back.json["champion"], back.json["generation"]) == ("v1", 3), back.err
    assert back.json["repaired_pointer"]["state"] == "bad"
    assert registry.pointer()["generation"] == 3 and registry.pointer()["uri"] == _located(registry, "v1")

    registry.put("champion.json", forged)
    fixed = registry.cli("repair", "--json")
    assert fixed.rc == 0 and fixed.json["changed"] is True and fixed.json["before"]["state"] == "bad"
    assert named in " ".join(fixed.json["before"]["problems"])
    assert registry.pointer() == registry.history()[-1]
    again = registry.cli("repair", "--json")
    assert again.json["changed"] is False and again.json["before"]["state"] == "ok"


def test_a_forged_pointer_before_any_promotion_is_replaced_by_the_first(registry):
    """The old failure: a pointer at generation 99 was never overwritten, so it stuck for good."""
    registry.publish("v1")
    registry.put("champion.json", json.dumps({
        "generation": 99, "action": "promote", "version": "v1", "uri": "/etc", "previous": None, "stack": ["v1"],
        "time": "2026-01-01T00:00:00Z"}).encode())
    shown = registry.cli("show", "champion")
    assert shown.rc == 2 and "has no champion yet" in shown.err and len(shown.lines) == 1
    checked = registry.cli("verify", "--json")
    assert checked.rc == 6 and "generation 99 is ahead of the champion history (it is empty)" in checked.out
    moved = registry.cli("promote", "v1", "--json")
    assert moved.rc == 0 and moved.json["generation"] == 1 and moved.json["repaired_pointer"]["state"] == "bad"
    assert registry.pointer()["generation"] == 1 and registry.pointer()["uri"] == _located(registry, "v1")
    registry.put("champion.json", b"{}")
    assert registry.cli("show", "champion", "--json").json["uri"] == _located(registry, "v1")


def test_a_pointer_with_no_history_under_it_is_removed_by_repair(registry):
    registry.publish("v1")
    registry.put("champion.json", b"{\"generation\": 3")
    fixed = registry.cli("repair", "--json")
    assert fixed.rc == 0 and fixed.json["changed"] is True and fixed.json["champion"] is None
    assert registry.pointer() is None


def test_damaged_history_records_are_named_and_passed_over(registry):
    registry.publish("v1", "v2", "v3")
    assert registry.cli("promote", "v1").rc == 0
    registry.put("champion-history/00000002.json", b"{\"generation\": 2, \"truncat")
    shown = registry.cli("show", "champion", "--json")
    assert shown.rc == 0 and shown.json["version"] == "v1"
    assert any("champion-history/00000002.json is not a champion record" in w for w in shown.json["warnings"])
    assert registry.cli("verify").rc == 6
    moved = registry.cli("promote", "v2", "--json")  # above the damaged record, on the last sound one
    assert moved.rc == 0 and (moved.json["generation"], moved.json["previous"]) == (3, "v1"), moved.err

    # A record beyond a gap, and a record whose uri points elsewhere: named; the uri is never served.
    record = json.loads(registry.get("champion-history/00000003.json"))
    registry.put("champion-history/00000099.json", forge(record, generation=99, version="v3", stack=["v3"]))
    shown = registry.cli("show", "champion", "--json")
    assert shown.json["version"] == "v2"
    assert any("00000099.json follows a gap in the generations" in w for w in shown.json["warnings"])
    registry.put("champion-history/00000100.json",
                 forge(record, generation=100, version="v3", stack=["v1", "v2", "v3"], previous="v2", uri="/etc",
                       manifest_sha256=None))
    shown = registry.cli("show", "champion", "--json")
    assert (shown.json["version"], shown.json["uri"]) == ("v3", _located(registry, "v3"))
    assert any("00000100.json: uri '/etc' is not the location" in w for w in shown.json["warnings"])
    assert registry.cli("repair").rc == 0 and registry.pointer()["uri"] == _located(registry, "v3")
    listed = registry.cli("show", "champion", "--history", "--json").json
    assert [r["generation"] for r in listed["history"]] == [1, 3, 100]
    assert len(listed["history_problems"]) == 2
    checked = registry.cli("verify", "--json")  # the old damaged record too, not only those above the newest
    assert checked.rc == 6 and any("00000002.json is not a champion record" in p for p in checked.json["problems"])


RACER = textwrap.dedent('''
    import contextlib, io, json, sys, time
    from pathlib import Path
    from t2iops.cli import main

    spec = json.loads(sys.argv[1])
    location = spec["location"]

    def cli(*args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["registry", *args, *location])
        return rc, out.getvalue(), err.getvalue()

    def forge(data):
        if spec["kind"] == "s3":
            import boto3
            boto3.client("s3", endpoint_url=spec["endpoint"], region_name="us-east-1").put_object(
                Bucket=spec["bucket"], Key=spec["prefix"] + "champion.json", Body=data)
        else:
            Path(spec["root"], "champion.json").write_bytes(data)

    report = {"rcs": [], "served": [], "changed": 0, "errors": [], "start": time.time()}
    for i in range(spec["rounds"]):
        if spec["role"] == "repair":
            forge(json.dumps({"generation": 99, "action": "promote", "version": "v1", "uri": "/etc",
                              "previous": None, "stack": ["v1"], "time": "x"}).encode())
            rc, out, err = cli("show", "champion", "--json")
            report["rcs"].append(rc)
            report["served"].append(json.loads(out)["uri"] if rc == 0 else err)
            rc, out, err = cli("repair", "--json")
            report["changed"] += bool(rc == 0 and json.loads(out)["changed"])
        else:
            rc, out, err = cli("promote", spec["versions"][i % len(spec["versions"])], "--json")
        report["rcs"].append(rc)
        if rc:
            report["errors"].append(err)
    report["end"] = time.time()
    print(json.dumps(report))
''')


def test_a_repair_racing_promotes_in_two_processes_leaves_one_sound_pointer(registry, tmp_path):
    versions = ["v1", "v2", "v3"]
    registry.publish(*versions)
    assert registry.cli("promote", "v1").rc == 0
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    base = {"kind": registry.kind, "location": registry.location, "root": registry.root, "rounds": 8,
            "versions": ["v2", "v3", "v1"]}
    if registry.kind == "s3":
        base.update(endpoint=registry.endpoint, bucket=registry.bucket, prefix=registry.prefix)
    procs = [subprocess.Popen([sys.executable, str(script), json.dumps({**base, "role": role})],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for role in ("repair", "promote")]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.splitlines()[-1]))
    repairer, promoter = reports
    assert max(r["start"] for r in reports) < min(r["end"] for r in reports)  # the two loops overlapped
    with registry.capsys.disabled():
        print(f"\nrace ({registry.kind}): repair loop {repairer['end'] - repairer['start']:.1f} s, promote loop "
              f"{promoter['end'] - promoter['start']:.1f} s, repairs that changed the pointer: {repairer['changed']}/8")
    assert set(repairer["rcs"]) == {0} and set(promoter["rcs"]) == {0}, (repairer["errors"], promoter["errors"])
    assert "/etc" not in repairer["served"] and all(u.startswith(registry.root + "/v") for u in repairer["served"])
    assert repairer["changed"] >= 1

    records = registry.history()
    assert [r["generation"] for r in records] == list(range(1, len(records) + 1))
    for before, after in zip(records, records[1:]):
        assert after["previous"] == before["version"] and after["stack"][-1] == after["version"]
    assert len(records) == 1 + 8  # every promote moved the champion (each names a version that is not it)
    assert registry.pointer() == records[-1]
    assert registry.cli("verify").rc == 0
