"""What tests put in a registry version: an evaluation's metrics.json in the layout
t2iops.evaluate writes. A plain module (not a conftest) so any test can import it by name: under
pytest, ``conftest`` names whichever conftest.py was imported last."""
from __future__ import annotations


def registry_test_metrics(edge_f1=0.30, circle_iou=0.50, fid=None, gate=True, without=0.10) -> dict:
    """An evaluation's metrics.json in the layout t2iops.evaluate writes."""
    out = {
        "num_samples": 8,
        "edge_f1": {"with_adapter": edge_f1, "without_adapter": without, "lift": edge_f1 - without},
        "circle_iou": {"with_adapter": circle_iou, "without_adapter": 0.2, "lift": circle_iou - 0.2},
        "gate": {"passed": gate, "checks": [{"name": "circle_iou", "value": circle_iou, "op": ">=",
                                             "threshold": 0.4, "passed": gate}]},
    }
    if fid is not None:
        out["fid"] = {"with_adapter": fid, "without_adapter": fid + 50}
    return out
