"""The champion-vs-challenger rules, on versions published into a folder registry by the real
publish step, and `t2iops registry compare` with its exit codes and decision files."""
from __future__ import annotations

import json

import pytest

from t2iops.cli import main
from t2iops.config import RegistryConfig, load_config
from t2iops.errors import UsageError
from t2iops.registry.decision import GATE_FAILED, KEEP, PROMOTE, decide, render_markdown
from t2iops.registry.versions import RegistryError, list_versions, read_version

MODEL = "t2i-adapter"


def info(registry, version):
    return read_version(str(registry), MODEL, version)


@pytest.fixture()
def registry(tmp_path):
    return tmp_path / "registry"


def test_no_champion_and_gate_passed_promotes(publish_version, registry, tmp_path):
    publish_version(registry, "v1")
    d = decide(info(registry, "v1"), None, RegistryConfig())
    assert d.outcome == PROMOTE and d.champion is None and d.primary_metric == "edge_f1"
    assert "no champion yet" in d.reasons[0]


def test_failed_gate_is_rejected_with_the_failed_check(publish_version, registry, tmp_path):
    publish_version(registry, "v1", gate=False, circle_iou=0.1)
    d = decide(info(registry, "v1"), None, RegistryConfig())
    assert d.outcome == GATE_FAILED
    assert d.reasons == ["gate check circle_iou: 0.1 >= 0.4 failed"]


def test_better_by_the_margin_promotes_and_a_tie_or_less_keeps(publish_version, registry, tmp_path):
    publish_version(registry, "champ", edge_f1=0.30)
    publish_version(registry, "better", edge_f1=0.32)
    publish_version(registry, "tie", edge_f1=0.30)
    publish_version(registry, "slightly", edge_f1=0.305)
    champ = info(registry, "champ")
    assert decide(info(registry, "better"), champ, RegistryConfig(margin=0.01)).outcome == PROMOTE
    tie = decide(info(registry, "tie"), champ, RegistryConfig(margin=0.0))
    assert tie.outcome == KEEP and "does not beat the champion's 0.3" in tie.reasons[0]
    slightly = decide(info(registry, "slightly"), champ, RegistryConfig(margin=0.01))
    assert slightly.outcome == KEEP and "margin 0.01" in slightly.reasons[0] and "+0.005" in slightly.reasons[0]


def test_another_metric_worse_than_the_tolerance_keeps_the_champion(publish_version, registry, tmp_path):
    publish_version(registry, "champ", edge_f1=0.30, circle_iou=0.50)
    publish_version(registry, "worse_iou", edge_f1=0.40, circle_iou=0.40)
    publish_version(registry, "within", edge_f1=0.40, circle_iou=0.49)
    champ = info(registry, "champ")
    d = decide(info(registry, "worse_iou"), champ, RegistryConfig(tolerance=0.05))
    assert d.outcome == KEEP
    assert d.reasons == ["circle_iou 0.4 is worse than the champion's 0.5 by 0.1, more than the tolerance 0.025"]
    assert decide(info(registry, "within"), champ, RegistryConfig(tolerance=0.05)).outcome == PROMOTE
    # a per-metric absolute tolerance replaces the relative one
    assert decide(info(registry, "worse_iou"), champ, RegistryConfig(tolerances={"circle_iou": 0.15})).outcome == PROMOTE


def test_lower_is_better_metrics_are_signed(publish_version, registry, tmp_path):
    publish_version(registry, "champ", edge_f1=0.30, fid=100.0)
    publish_version(registry, "fid_up", edge_f1=0.40, fid=120.0)
    publish_version(registry, "fid_down", edge_f1=0.40, fid=80.0)
    champ = info(registry, "champ")
    up = decide(info(registry, "fid_up"), champ, RegistryConfig(tolerance=0.05))
    assert up.outcome == KEEP and up.reasons[0].startswith("fid 120 is worse than the champion's 100 by 20")
    down = decide(info(registry, "fid_down"), champ, RegistryConfig())
    assert down.outcome == PROMOTE
    row = next(r for r in down.rows if r.name == "fid")
    assert row.higher_is_better is False and row.improvement == pytest.approx(20.0) and row.passed is True


def test_value_lift_compares_lifts_and_primary_metric_can_be_named(publish_version, registry, tmp_path):
    publish_version(registry, "champ", edge_f1=0.30, without=0.10)  # lift 0.20
    publish_version(registry, "chal", edge_f1=0.35, without=0.25)  # higher value, lift 0.10
    champ, chal = info(registry, "champ"), info(registry, "chal")
    assert decide(chal, champ, RegistryConfig(value="with_adapter")).outcome == PROMOTE
    assert decide(chal, champ, RegistryConfig(value="lift")).outcome == KEEP
    named = decide(chal, champ, RegistryConfig(primary_metric="circle_iou", tolerance=1.0))
    assert named.primary_metric == "circle_iou" and named.outcome == KEEP  # equal circle IoU: a tie


def test_missing_primary_metric_keeps_and_says_so(publish_version, registry, tmp_path):
    publish_version(registry, "champ")
    publish_version(registry, "chal")
    d = decide(info(registry, "chal"), info(registry, "champ"), RegistryConfig(primary_metric="canny_f1"))
    assert d.outcome == KEEP and "canny_f1 is missing" in d.reasons[0]


def test_different_evaluation_settings_are_noted(publish_version, registry, tmp_path):
    publish_version(registry, "champ", cfg=load_config(None, ["evaluate.num_samples=64"]))
    publish_version(registry, "chal", edge_f1=0.4, cfg=load_config(None, ["evaluate.num_samples=8"]))
    d = decide(info(registry, "chal"), info(registry, "champ"), RegistryConfig())
    assert any(n.startswith("evaluate.num_samples differs (champion 64, challenger 8)") for n in d.notes)
    text = render_markdown(d)
    assert "| **edge_f1** (primary) | higher | 0.3 | 0.4 | +0.1 | improve by >= 0.01 | yes |" in text


def test_a_tampered_metrics_file_is_refused(publish_version, registry, tmp_path):
    uri = publish_version(registry, "v1")
    (registry / MODEL / "v1" / "metrics.json").write_text(json.dumps({"edge_f1": {"with_adapter": 0.99}}))
    with pytest.raises(RegistryError, match="does not match the sha256 in its manifest"):
        info(registry, "v1")
    assert uri.endswith("v1") and list_versions(str(registry), MODEL) == ["v1"]


def test_unknown_version_names_the_published_ones(publish_version, registry, tmp_path):
    publish_version(registry, "v1")
    with pytest.raises(RegistryError, match=r"'v9' is not published .* \(published: v1\)"):
        info(registry, "v9")
    with pytest.raises(UsageError, match="must be 1-128 letters"):
        info(registry, "../v1")


def test_compare_command_exit_codes_and_decision_files(publish_version, registry, tmp_path, capsys):
    publish_version(registry, "v1", edge_f1=0.30)
    publish_version(registry, "v2", edge_f1=0.20)
    publish_version(registry, "bad", gate=False)
    base = ["--params", str(tmp_path / "none.yaml"), "--registry", str(registry)]
    (tmp_path / "none.yaml").write_text("{}")
    out = tmp_path / "decision"
    assert main(["registry", "compare", "v1", *base, "--out", str(out)]) == 0  # no champion yet
    assert json.loads((out / "decision.json").read_text())["outcome"] == PROMOTE
    assert main(["registry", "compare", "v2", "--champion", "v1", *base, "--out", str(out), "--record"]) == 4
    decision = json.loads((out / "decision.json").read_text())
    assert decision["outcome"] == KEEP and decision["champion"] == "v1" and "edge_f1 0.2" in decision["reasons"][0]
    assert "### Registry decision: keep the champion `v1`" in (out / "decision.md").read_text()
    (recorded,) = (registry / MODEL / "decisions").iterdir()
    assert recorded.name.endswith("-v2") and (recorded / "_manifest.json").exists()
    assert main(["registry", "compare", "bad", *base, "--out", str(out)]) == 3
    assert main(["registry", "compare", "v9", *base]) == 2
    assert "version 'v9' is not published" in capsys.readouterr().err
