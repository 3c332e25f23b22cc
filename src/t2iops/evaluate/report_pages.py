"""The two pages people read, ``report.md`` and ``report.html``, from the parts
:func:`t2iops.evaluate.report.write_outputs` gathers.

Both read top down in the order a reader asks: did the gate pass, what did the adapter change
(the headline lift, against the real images' value), what each number means, then the tables,
the figures, the notes and every setting.
"""
from __future__ import annotations

import html
from typing import Any

GRID, LOSS_CURVE, SWEEP = "grid.png", "loss_curve.png", "sweep.png"

# What each number measures, in one line (docs/evaluation.md has the full protocol).
MEANING = {
    "circle_iou": "overlap (intersection over union) of the disc in the generated image with the disc the "
                  "condition outlines; 1 is an exact match.",
    "edge_f1": "how well the generated image's edges (canny) fall on the condition's edges, as an F1 score; "
               "1 means every edge is where the condition draws one and nowhere else.",
    "canny_f1": "how well the generated image's canny edges fall on the condition's edges, as an F1 score; "
                "1 means every edge is where the condition draws one and nowhere else.",
    "ssim": "structural similarity of a line drawing of the generated image with the condition; 1 is identical.",
    "depth_rmse": "error (RMSE, 0-255 grey levels) between the depth estimated from the generated image and the "
                  "condition's depth map; 0 is an exact match.",
    "miou": "mean intersection over union of the segmentation estimated from the generated image with the "
            "condition's label map; 1 is an exact match.",
    "clip_score": "how well the image matches its caption: 100 x the cosine of CLIP's image and text embeddings.",
    "fid": "Frechet Inception distance from the generated images to the real ones: realism and image quality, "
           "not fidelity to the condition; compare only at equal sample counts.",
    "kid": "kernel Inception distance: the same question as FID, unbiased at small sample counts.",
    "loss": "the adapter's denoising error on its training data at each optimizer step; it should fall and "
            "then level off.",
}
LABEL = {"circle_iou": "circle IoU", "edge_f1": "edge F1", "canny_f1": "canny F1", "ssim": "SSIM",
         "depth_rmse": "depth RMSE", "miou": "mIoU", "clip_score": "CLIP score", "fid": "FID", "kid": "KID"}
ARROW = "\u2192"


def fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _short(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def verdict(gate: dict) -> tuple[str, str]:
    """``(state, sentence)``: state is ``passed``, ``failed`` or ``unset`` (no thresholds)."""
    checks = gate["checks"]
    if not checks:
        return "unset", "Gate: no thresholds set (evaluate.gate), so there is nothing to pass or fail."

    def said(c: dict) -> str:
        if c["value"] is None:
            return f"{c['name']} not measured ({c.get('note') or 'no value'})"
        return f"{c['name']} {_short(c['value'])} (needs {c['op']} {_short(c['threshold'])})"

    if gate["passed"]:
        return "passed", "Gate passed: " + "; ".join(said(c) for c in checks) + "."
    missed = [c for c in checks if not c["passed"]]
    return "failed", f"Gate FAILED ({len(missed)} of {len(checks)} checks missed): " + "; ".join(
        said(c) for c in missed) + "."


def headline(metrics: dict, metric: dict, scale: str) -> str:
    """The headline metric without and with the adapter, next to the real images' value."""
    values = metrics[metric["name"]]
    label = LABEL.get(metric["name"], metric["name"])
    real = f"; real images {_short(values['real_images'])}" if "real_images" in values else ""
    better = "higher" if metric["higher_is_better"] else "lower"
    return (f"{label} {_short(values['without_adapter'])} {ARROW} {_short(values['with_adapter'])} with the adapter "
            f"(scale {scale}; lift {values['lift']:+.3g}, {better} is better{real})")


def meanings(names: list[str], descriptions: dict[str, str]) -> list[tuple[str, str]]:
    """``(metric, one line)`` for each metric the report shows, in its order; a metric of a
    user's own estimator keeps the description it was registered with."""
    return [(n, MEANING.get(n) or descriptions.get(n) or "a metric of the registered estimator.") for n in names]


def _gate_lines(gate: dict) -> list[tuple]:
    return [(c["name"], fmt(c["value"]), f"{c['op']} {fmt(c['threshold'])}", "pass" if c["passed"] else "FAIL",
             c.get("note", "")) for c in gate["checks"]]


METRIC_COLUMNS = ["metric", "without adapter", "with adapter", "lift", "real images", "better"]
GATE_COLUMNS = ["check", "value", "needs", "result", "note"]


def markdown(parts: dict, images: dict) -> str:
    metrics, gate = parts["metrics"], parts["gate"]
    state, sentence = verdict(gate)
    out = ["# Adapter evaluation", "", f"**{sentence}**", "", f"**{parts['headline']}**", "",
           f"{metrics['num_samples']} samples. Lift = with adapter - without adapter (same seeds, same prompts).",
           "", "## What the numbers mean", ""]
    out += [f"- **{name}**: {line}" for name, line in parts["meanings"]]
    out += ["", "## Metrics", "", f"| {' | '.join(METRIC_COLUMNS)} |", "|---|---|---|---|---|---|"]
    out += [f"| {' | '.join(fmt(x) for x in row)} |" for row in parts["table"]]
    out += ["", f"## Gate: {state}", ""]
    if gate["checks"]:
        out += [f"| {' | '.join(GATE_COLUMNS)} |", "|---|---|---|---|---|"]
        out += [f"| {' | '.join(line)} |" for line in _gate_lines(gate)]
    else:
        out.append("No thresholds configured (evaluate.gate).")
    if parts["sweep"]:
        columns, rows = parts["sweep"]
        out += ["", "## Conditioning-scale sweep", "", f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
        out += [f"| {' | '.join(fmt(x) for x in row)} |" for row in rows]
        out += ["", f"![metrics vs conditioning scale]({images[SWEEP]})"]
    caption = f"{parts['grid_caption']}: {' | '.join(parts['grid_columns'])}"
    out += ["", "## Samples", "", caption + ".", "", f"![{caption}]({images[GRID]})"]
    if LOSS_CURVE in images:
        out += ["", "## Training loss", "", f"From `{parts['loss_source']}`.", "",
                f"![training loss]({images[LOSS_CURVE]})"]
    out += ["", "## Notes", ""]
    out += [f"- {c}" for c in parts["caveats"]] or ["- none"]
    out += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in parts["settings"]]
    return "\n".join(out) + "\n"


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}img{image-rendering:pixelated;max-width:100%}
.verdict{font-size:1.25em;font-weight:bold;padding:.5em .8em;border-left:.4em solid}
.passed{background:#e6f4ea;border-color:#1e8e3e}.failed{background:#fce8e6;border-color:#d93025}
.unset{background:#f1f3f4;border-color:#80868b}#headline{font-size:1.15em}
#metric-guide dt{font-weight:bold;float:left;clear:left;margin-right:.5em}#metric-guide dd{margin:0 0 .2em 0}
figure{margin:0}figcaption{margin:.4em 0}"""


def page(parts: dict, images: dict) -> str:
    """The report as one self-contained page: every image is a data: URI."""
    e = html.escape
    metrics, gate = parts["metrics"], parts["gate"]

    def rows(items):
        return "".join("<tr>" + "".join(f"<td>{e(fmt(x))}</td>" for x in item) + "</tr>" for item in items)

    def head(columns):
        return "<tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr>"

    def img(name, alt):
        return f'<img alt="{e(alt)}" src="{images[name]}">'

    state, sentence = verdict(gate)
    gate_html = (f'<table id="gate">{head(GATE_COLUMNS)}{rows(_gate_lines(gate))}</table>'
                 if gate["checks"] else "<p>No thresholds configured (evaluate.gate).</p>")
    guide = "".join(f'<dt>{e(n)}</dt><dd data-metric="{e(n)}">{e(line)}</dd>' for n, line in parts["meanings"])
    sweep_html = ""
    if parts["sweep"]:
        columns, sweep_rows = parts["sweep"]
        sweep_html = (f'<h2>Conditioning-scale sweep</h2><table id="sweep">{head(columns)}{rows(sweep_rows)}</table>'
                      f'<figure id="sweep-plot">{img(SWEEP, "metrics vs conditioning scale")}</figure>')
    loss_html = ""
    if LOSS_CURVE in images:
        loss_html = (f"<h2>Training loss</h2><p>From <code>{e(str(parts['loss_source']))}</code>.</p>"
                     f'<figure id="loss-curve">{img(LOSS_CURVE, "training loss")}</figure>')
    columns = " | ".join(f'<span class="grid-column">{e(c)}</span>' for c in parts["grid_columns"])
    caption = f"{parts['grid_caption']}: {' | '.join(parts['grid_columns'])}"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Adapter evaluation</title>
<style>{STYLE}</style></head>
<body><h1>Adapter evaluation</h1>
<p id="verdict" class="verdict {state}">{e(sentence)}</p>
<p id="headline">{e(parts['headline'])}</p>
<p>{metrics['num_samples']} samples. Lift = with adapter - without adapter (same seeds, same prompts).</p>
<h2>What the numbers mean</h2><dl id="metric-guide">{guide}</dl>
<h2>Metrics</h2><table id="metrics">{head(METRIC_COLUMNS)}{rows(parts['table'])}</table>
<h2>Gate: {state}</h2>{gate_html}
{sweep_html}
<h2>Samples</h2><figure id="grid"><figcaption>{e(parts['grid_caption'])}: {columns}.</figcaption>
{img(GRID, caption)}</figure>
{loss_html}
<h2>Notes</h2><ul>{''.join(f'<li>{e(c)}</li>' for c in parts['caveats']) or '<li>none</li>'}</ul>
<h2>Settings</h2><table id="settings">{rows(parts['settings'])}</table>
</body></html>
"""
