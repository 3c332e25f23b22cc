"""The evaluation gate: each threshold passes and fails on the right side."""
from __future__ import annotations

import pytest

from t2iops.config import GateConfig
from t2iops.evaluate.report import evaluate_gate, notes

INFO = {
    "fidelity": [
        {"name": "edge_f1", "higher_is_better": True, "description": ""},
        {"name": "circle_iou", "higher_is_better": True, "description": ""},
    ],
    "fid_missing": None,
}
METRICS = {
    "num_samples": 64,
    "edge_f1": {"with_adapter": 0.30, "without_adapter": 0.10, "lift": 0.20},
    "circle_iou": {"with_adapter": 0.40, "without_adapter": 0.20, "lift": 0.20},
    "fid": {"with_adapter": 80.0, "without_adapter": 95.0},
    "kid": {"with_adapter": 0.05, "without_adapter": 0.07},
}


@pytest.mark.parametrize(
    "gate, passed",
    [
        ({"min_fidelity_lift": 0.19}, True),
        ({"min_fidelity_lift": 0.21}, False),
        ({"max_fid": 80.5}, True),
        ({"max_fid": 79.5}, False),
        ({"max_kid": 0.06}, True),
        ({"max_kid": 0.04}, False),
        ({"min_circle_iou": 0.39}, True),
        ({"min_circle_iou": 0.41}, False),
        ({"min_fidelity_lift": 0.1, "max_fid": 100.0, "min_circle_iou": 0.41}, False),
    ],
)
def test_thresholds(gate, passed):
    result = evaluate_gate(METRICS, INFO, GateConfig(**gate))
    assert result["passed"] is passed
    assert len(result["checks"]) == len(gate)
    failing = [c["name"] for c in result["checks"] if not c["passed"]]
    assert bool(failing) is (not passed)


def test_no_thresholds_pass_with_no_checks():
    assert evaluate_gate(METRICS, INFO, GateConfig()) == {"passed": True, "checks": []}


def test_lower_is_better_primary_metric_must_drop():
    info = {"fidelity": [{"name": "depth_rmse", "higher_is_better": False, "description": ""}], "fid_missing": None}
    metrics = {"depth_rmse": {"with_adapter": 30.0, "without_adapter": 40.0, "lift": -10.0}}
    assert evaluate_gate(metrics, info, GateConfig(min_fidelity_lift=5.0))["passed"] is True
    assert evaluate_gate(metrics, info, GateConfig(min_fidelity_lift=15.0))["passed"] is False


def test_a_threshold_on_a_missing_fid_fails_and_says_why():
    info = {**INFO, "fid_missing": "evaluate.inception_weights: /x is not a file"}
    metrics = {k: v for k, v in METRICS.items() if k not in ("fid", "kid")}
    result = evaluate_gate(metrics, info, GateConfig(max_fid=100.0))
    assert result["passed"] is False
    assert result["checks"][0]["value"] is None and "/x is not a file" in result["checks"][0]["note"]


def test_notes_warn_about_small_n_and_name_the_missing_fid_reason():
    small = notes({**METRICS, "num_samples": 64}, INFO)
    assert any("64 < 2048" in n and "KID" in n for n in small)
    assert any("antialias=False" in n for n in small)
    assert not any("< 2048" in n for n in notes({**METRICS, "num_samples": 4096}, INFO))
    missing = notes({"num_samples": 8}, {**INFO, "fid_missing": "weights not found"})
    assert missing == ["FID and KID are missing: weights not found"]
