"""The sentences the report opens with: the gate's verdict and the headline, and the one line
per metric."""
from __future__ import annotations

from t2iops.evaluate.report_pages import MEANING, headline, meanings, verdict


def _check(name, value, op, threshold, passed, note=""):
    return {"name": name, "value": value, "op": op, "threshold": threshold, "passed": passed, "note": note}


def test_verdict_says_passed_failed_or_that_nothing_was_set():
    passed = {"passed": True, "checks": [_check("circle_iou", 0.8512, ">=", 0.5, True)]}
    assert verdict(passed) == ("passed", "Gate passed: circle_iou 0.851 (needs >= 0.5).")
    failed = {"passed": False, "checks": [_check("circle_iou", 0.8512, ">=", 0.5, True),
                                          _check("fid", None, "<=", 50.0, False, "FID/KID turned off (evaluate.fid=off)"),
                                          _check("edge_f1_lift", -0.01, ">=", 0.05, False)]}
    assert verdict(failed) == ("failed", "Gate FAILED (2 of 3 checks missed): fid not measured (FID/KID turned off "
                                         "(evaluate.fid=off)); edge_f1_lift -0.01 (needs >= 0.05).")
    state, sentence = verdict({"passed": True, "checks": []})
    assert state == "unset" and "no thresholds set (evaluate.gate)" in sentence


def test_headline_puts_the_lift_beside_the_real_images():
    metrics = {"circle_iou": {"with_adapter": 0.8512, "without_adapter": 0.3013, "lift": 0.5499, "real_images": 1.0},
               "depth_rmse": {"with_adapter": 12.0, "without_adapter": 30.0, "lift": -18.0}}
    assert headline(metrics, {"name": "circle_iou", "higher_is_better": True}, "1") == (
        "circle IoU 0.301 \u2192 0.851 with the adapter (scale 1; lift +0.55, higher is better; real images 1)")
    assert headline(metrics, {"name": "depth_rmse", "higher_is_better": False}, "0.8") == (
        "depth RMSE 30 \u2192 12 with the adapter (scale 0.8; lift -18, lower is better)")


def test_every_metric_shown_gets_one_line():
    lines = meanings(["edge_f1", "circle_iou", "fid", "kid", "loss", "my_metric"], {"my_metric": "a user's own"})
    assert [n for n, _ in lines] == ["edge_f1", "circle_iou", "fid", "kid", "loss", "my_metric"]
    assert lines[-1] == ("my_metric", "a user's own")
    assert all("\n" not in line and len(line) < 200 for line in MEANING.values())
