"""Champion vs challenger: the rules of the ``registry`` configuration section, applied.

1. The challenger must have passed its evaluation gate (the verdict in its ``metrics.json``).
2. With no champion, that is enough: promote.
3. Else the primary metric must improve on the champion's by at least ``registry.margin``
   (absolute, in the metric's better direction; a tie never wins), and
4. no other metric both versions report may be worse than the champion's by more than
   ``registry.tolerances[name]`` (absolute) or else ``registry.tolerance`` x |champion value|.

The outcome is ``promote``, ``keep`` (the champion stays) or ``gate_failed``, with every reason
spelled out in ``decision.json`` and a champion-vs-challenger table in ``decision.md``.
:func:`record_decision` keeps both files in the registry, beside the versions they judge.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import storage
from .versions import VersionInfo, model_root

PROMOTE, KEEP, GATE_FAILED = "promote", "keep", "gate_failed"
# Metrics that are not condition-fidelity metrics, and which way is better.
_OTHER_DIRECTIONS = {"clip_score": True, "fid": False, "kid": False}
_NOT_METRICS = {"gate", "sweep", "num_samples"}


def metric_directions() -> dict[str, bool]:
    """Every metric name an evaluation writes -> whether higher is better."""
    from ..evaluate.condition_fidelity import CIRCLE_IOU, REGISTRY

    directions = {m.name: m.higher_is_better for m in [*REGISTRY.values(), CIRCLE_IOU]}
    directions.update(_OTHER_DIRECTIONS)
    return directions


def primary_metric(rules: Any, challenger: VersionInfo, fallback_kind: str) -> str:
    """``registry.primary_metric``, or for ``auto`` the first fidelity metric of the condition
    kind the challenger was evaluated with."""
    if rules.primary_metric != "auto":
        return rules.primary_metric
    from ..evaluate.condition_fidelity import REGISTRY

    kind = (challenger.config.get("evaluate") or {}).get("condition_kind") or fallback_kind
    if kind not in REGISTRY:
        return REGISTRY[fallback_kind].name
    return REGISTRY[kind].name


def metric_values(metrics: dict[str, Any], value: str) -> dict[str, float]:
    """``{name: number}`` of one version: ``value`` (with_adapter | lift) of each metric, falling
    back to with_adapter for metrics without a lift (FID, KID)."""
    out = {}
    for name, entry in metrics.items():
        if name in _NOT_METRICS or not isinstance(entry, dict):
            continue
        number = entry.get(value, entry.get("with_adapter"))
        if isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number):
            out[name] = float(number)
    return out


@dataclass
class MetricRow:
    name: str
    higher_is_better: bool
    champion: Optional[float]
    challenger: Optional[float]
    improvement: Optional[float]  # challenger - champion, signed so that positive is better
    rule: str
    passed: Optional[bool]  # None: not checked


@dataclass
class Decision:
    outcome: str
    challenger: str
    champion: Optional[str]
    primary_metric: str
    reasons: list[str]
    rows: list[MetricRow]
    rules: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    gate: Optional[dict[str, Any]] = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    context: dict[str, Any] = field(default_factory=dict)  # run id, git SHA, data revision...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """What a champion history record keeps of the decision."""
        primary = next((r for r in self.rows if r.name == self.primary_metric), None)
        return {"outcome": self.outcome, "challenger": self.challenger, "champion": self.champion,
                "primary_metric": self.primary_metric, "reasons": self.reasons,
                "primary": asdict(primary) if primary else None, "created": self.created}


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"


def _gate_reasons(gate: Optional[dict[str, Any]]) -> list[str]:
    if not gate:
        return ["the challenger's metrics.json has no gate verdict"]
    failed = [c for c in gate.get("checks", []) if not c.get("passed")]
    return [f"gate check {c.get('name')}: {_fmt(c.get('value'))} {c.get('op')} {c.get('threshold')} failed"
            for c in failed] or ["the challenger's evaluation gate did not pass"]


def _evaluation_differences(challenger: VersionInfo, champion: VersionInfo) -> list[str]:
    """Evaluation settings that differ: the numbers are then not measured the same way."""
    a = {k: v for k, v in (champion.config.get("evaluate") or {}).items() if k != "gate"}
    b = {k: v for k, v in (challenger.config.get("evaluate") or {}).items() if k != "gate"}
    return [f"evaluate.{k} differs (champion {a.get(k)!r}, challenger {b.get(k)!r}): the metrics were not "
            "measured the same way" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def decide(challenger: VersionInfo, champion: Optional[VersionInfo], rules: Any, fallback_kind: str = "circle_outline",
           context: Optional[dict[str, Any]] = None) -> Decision:
    """Apply the rules; ``rules`` is a :class:`t2iops.config.RegistryConfig`."""
    primary = primary_metric(rules, challenger, fallback_kind)
    directions = metric_directions()
    new = metric_values(challenger.metrics, rules.value)
    old = metric_values(champion.metrics, rules.value) if champion else {}
    rows, reasons, notes = [], [], []
    for name in sorted(set(new) | set(old), key=lambda n: (n != primary, n)):
        higher = directions.get(name)
        a, b = old.get(name), new.get(name)
        if higher is None:
            notes.append(f"{name}: direction unknown, not compared")
            continue
        improvement = None if a is None or b is None else (b - a if higher else a - b)
        if champion is None or improvement is None:
            rows.append(MetricRow(name, higher, a, b, improvement, "primary" if name == primary else "-", None))
            continue
        if name == primary:
            ok = improvement >= rules.margin and improvement > 0
            rule = f"improve by >= {rules.margin:g}"
            if not ok:
                reasons.append(f"{name} {_fmt(b)} does not beat the champion's {_fmt(a)} by the margin "
                               f"{rules.margin:g} (change {improvement:+.4g})")
        else:
            allowed = rules.tolerances.get(name, rules.tolerance * abs(a))
            ok = -improvement <= allowed
            rule = f"worse by <= {allowed:.4g}"
            if not ok:
                reasons.append(f"{name} {_fmt(b)} is worse than the champion's {_fmt(a)} by {-improvement:.4g}, "
                               f"more than the tolerance {allowed:.4g}")
        rows.append(MetricRow(name, higher, a, b, improvement, rule, ok))
    gate = challenger.gate
    if not (gate or {}).get("passed"):
        outcome, reasons = GATE_FAILED, _gate_reasons(gate)
    elif champion is None:
        outcome, reasons = PROMOTE, ["no champion yet and the challenger passed its gate"]
    elif primary not in new or primary not in old:
        outcome = KEEP
        reasons = [f"the primary metric {primary} is missing from the "
                   f"{'challenger' if primary not in new else 'champion'}'s metrics.json: promote by hand if intended"]
    elif reasons:
        outcome = KEEP
    else:
        outcome = PROMOTE
        row = rows[0]
        reasons = [f"{primary} {_fmt(row.challenger)} beats the champion's {_fmt(row.champion)} by "
                   f"{row.improvement:+.4g} (margin {rules.margin:g}) and no other metric is worse beyond tolerance"]
    if champion is not None:
        notes.extend(_evaluation_differences(challenger, champion))
    return Decision(outcome, challenger.name, champion.name if champion else None, primary, reasons, rows,
                    rules.model_dump(mode="json"), notes, gate, context=dict(context or {}))


def render_markdown(decision: Decision) -> str:
    """The champion-vs-challenger table people read (a job summary, a PR comment)."""
    verdict = {PROMOTE: f"promote `{decision.challenger}`",
               KEEP: f"keep the champion `{decision.champion}`",
               GATE_FAILED: f"reject `{decision.challenger}`: it failed its evaluation gate"}[decision.outcome]
    lines = [f"### Registry decision: {verdict}", ""]
    lines += [f"- {r}" for r in decision.reasons]
    champ = f"champion `{decision.champion}`" if decision.champion else "champion (none)"
    lines += ["", f"| metric | better | {champ} | challenger `{decision.challenger}` | change | rule | ok |",
              "|---|---|---:|---:|---:|---|---|"]
    for r in decision.rows:
        mark = {True: "yes", False: "**no**", None: "-"}[r.passed]
        name = f"**{r.name}** (primary)" if r.name == decision.primary_metric else r.name
        change = "-" if r.improvement is None else f"{r.improvement:+.4g}"
        lines.append(f"| {name} | {'higher' if r.higher_is_better else 'lower'} | {_fmt(r.champion)} | "
                     f"{_fmt(r.challenger)} | {change} | {r.rule} | {mark} |")
    if decision.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in decision.notes]
    context = ", ".join(f"{k} `{v}`" for k, v in decision.context.items() if v not in (None, ""))
    lines += ["", f"Rules: `registry` section {json.dumps(decision.rules, sort_keys=True)}. "
              "Change is challenger minus champion, signed so that positive is better."]
    if context:
        lines.append(f"Context: {context}.")
    return "\n".join(lines) + "\n"


def write_decision(decision: Decision, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "decision.json", out / "decision.md"
    json_path.write_text(json.dumps(decision.to_dict(), indent=2) + "\n")
    md_path.write_text(render_markdown(decision))
    return json_path, md_path


def record_decision(registry: str, model_name: str, decision: Decision, local_dir: str | Path, cfg: Any) -> str:
    """Keep decision.json/.md (as :func:`write_decision` wrote them to ``local_dir``) under
    ``<model>/decisions/<UTC time>-<challenger>/``, the manifest last; returns that location."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = storage.join(model_root(registry, model_name), "decisions", f"{stamp}-{decision.challenger}")
    with storage.publish(dest, cfg, extra={"stage": "registry-decision"}) as staging:
        for name in ("decision.json", "decision.md"):
            (staging / name).write_bytes((Path(local_dir) / name).read_bytes())
    return dest
