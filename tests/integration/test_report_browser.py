"""report.html as a browser shows it: headless Chromium renders the real evaluation report
(tests/integration/conftest.py builds it), and the page it lays out must open with the gate's
verdict, in view, above every table, and show every embedded image.

Needs Debian's ``chromium``; skips, saying so, where it is missing, unless
``T2IOPS_REQUIRE_BROWSER=1`` (.ci/run sets it once it has installed the package)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.xdist_group("eval-report")  # shares the report the other report tests build

WINDOW = (1280, 2000)
FIRST_SCREEN = 600  # px: what a reader sees before scrolling, on a small laptop screen
# Appended to a copy of the page: once every image has loaded, it writes what the browser laid
# out (boxes in CSS px from the top of the page) and the images' decoded sizes into the DOM.
PROBE = """<script>
window.addEventListener("load", function () {
  var box = function (el) { var r = el.getBoundingClientRect(); return [r.top, r.bottom]; };
  var out = document.createElement("pre");
  out.id = "browser-probe";
  out.textContent = JSON.stringify({
    order: Array.from(document.body.children).map(function (el) { return el.id || el.tagName.toLowerCase(); }),
    verdict: box(document.getElementById("verdict")),
    firstTable: box(document.querySelector("table")),
    images: Array.from(document.images).map(function (i) {
      var r = i.getBoundingClientRect();
      return {alt: i.alt, complete: i.complete, natural: [i.naturalWidth, i.naturalHeight],
              box: [r.left, r.top, r.right, r.bottom]};
    })
  });
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser, looked for before the report is built (a skip then costs nothing)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("T2IOPS_REQUIRE_BROWSER") == "1":
        pytest.fail("T2IOPS_REQUIRE_BROWSER=1 but no chromium on PATH (Debian: apt-get install chromium)")
    pytest.skip("no chromium on PATH to render report.html (Debian: apt-get install chromium)")


def _run(chromium: str, profile: Path, *args: str) -> str:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def test_the_browser_shows_the_verdict_first_and_every_image(chromium, report_sweep, tmp_path):
    out, metrics, _ = report_sweep
    page = (out / "report.html").read_text()
    probed = tmp_path / "report-probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))

    dom = _run(chromium, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="browser-probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not run; the browser's DOM ends: {dom[-500:]}"
    seen = json.loads(found.group(1))
    assert seen["order"][:3] == ["h1", "verdict", "headline"]
    assert seen["verdict"][1] <= FIRST_SCREEN and seen["verdict"][1] <= seen["firstTable"][0]
    shown = {i["alt"]: i for i in seen["images"]}
    files = {"grid.png": next(a for a in shown if a.startswith("the best and the worst")),
             "loss_curve.png": "training loss", "sweep.png": "metrics vs conditioning scale"}
    assert len(shown) == len(files) and all(i["complete"] for i in shown.values())
    for name, alt in files.items():
        assert tuple(shown[alt]["natural"]) == Image.open(out / name).size, name

    shot = tmp_path / "report.png"
    _run(chromium, tmp_path / "profile", f"--screenshot={shot}", probed.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    assert (pixels.min(axis=2) < 200).mean() > 0.02, "the screenshot is (nearly) blank"
    # The verdict box, in the failed gate's colours, is painted within the first screen.
    assert not metrics["gate"]["passed"]
    top = pixels[:FIRST_SCREEN]
    for colour, least in (((0xfc, 0xe8, 0xe6), 20_000), ((0xd9, 0x30, 0x25), 150)):  # .failed background, border
        assert (np.abs(top - colour).max(axis=2) <= 2).sum() > least, f"too little verdict colour {colour} on top"
    # Each image the window shows is painted pixel for pixel as the PNG beside the report.
    painted = 0
    for name, alt in files.items():
        left, top_, right, bottom = (round(v) for v in shown[alt]["box"])
        if bottom > WINDOW[1]:
            continue  # below the window: the DOM check above covers it
        png = np.asarray(Image.open(out / name).convert("RGB")).astype(int)
        assert (right - left, bottom - top_) == (png.shape[1], png.shape[0]), f"{name} is drawn scaled"
        assert np.abs(pixels[top_:bottom, left:right] - png).mean() < 2, f"{name} is not what the page shows"
        painted += 1
    assert painted >= 2
