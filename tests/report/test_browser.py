"""Open the report in headless Chromium: every image loads and the page renders.

Needs Debian's ``chromium`` package (installed by the test set-up); skips without it. The
screenshot and the report are kept under ``test-artifacts/report/`` in the repository root.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl.report import write_report

from .conftest import make_fake_cv_run

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "report"
WIDTH, HEIGHT = 1280, 2000

# Appended to a copy of the report only (the report itself has no script): after load, write
# how many images decoded into the DOM, where --dump-dom can read it.
_CHECK = """<script>window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  const out = document.createElement("pre");
  out.id = "medtl-img-check";
  out.textContent = ok + "/" + imgs.length;
  document.body.appendChild(out);
});</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--run-all-compositor-stages-before-draw",
           "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium) "
                    "to run the browser test")
    root = tmp_path_factory.mktemp("browser")
    fake = make_fake_cv_run(root)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = write_report(fake.run, ARTIFACTS / "report.html")
    return out


def test_every_image_loads_in_chromium(report, tmp_path):
    n_imgs = len(re.findall(r"<img\b", report.read_text()))
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", _CHECK + "</body>"))
    res = _chromium(tmp_path, "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="medtl-img-check">(\d+)/(\d+)</pre>', res.stdout)
    assert found, f"chromium printed no image check (exit {res.returncode}): {res.stderr[-500:]}"
    ok, total = map(int, found.groups())
    assert total == n_imgs > 0
    assert ok == total, f"{total - ok} of {total} images did not load"


def test_page_renders_to_a_non_blank_screenshot(report, tmp_path):
    shot = ARTIFACTS / "report_screenshot.png"
    shot.unlink(missing_ok=True)
    res = _chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", report.as_uri())
    assert shot.is_file(), f"no screenshot (exit {res.returncode}): {res.stderr[-500:]}"
    with Image.open(shot) as im:
        assert im.size == (WIDTH, HEIGHT)
        rgb = np.asarray(im.convert("RGB"))
    grey = rgb.mean(axis=2)
    assert grey.std() > 20  # text, tables and figures, not one flat colour
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 200
    dark_rows = (grey < 100).mean(axis=1) > 0.5
    assert dark_rows[:40].all()  # the dark header bar is drawn at the top
    assert (grey[300:] < 128).mean() > 0.01  # and there is content below it


# Clicks the first gallery case's images open and shut, measuring the first image each time.
_ZOOM = """<script>window.addEventListener("load", () => {
  const pair = document.querySelector(".case .pair");
  const img = pair.querySelector("img");
  const before = img.getBoundingClientRect().width;
  pair.click();
  const opened = img.getBoundingClientRect().width, cover = pair.getBoundingClientRect();
  const checked = document.getElementById(pair.htmlFor).checked;
  pair.click();
  const out = document.createElement("pre");
  out.id = "medtl-zoom-check";
  out.textContent = [before, opened, cover.left, cover.top, cover.width, cover.height, innerWidth,
                     innerHeight, checked, img.getBoundingClientRect().width].join(" ");
  document.body.appendChild(out);
});</script>"""


def test_a_click_enlarges_a_case_across_the_window_and_a_second_click_restores_it(report, tmp_path):
    page = report.read_text()
    assert "<script" not in page  # the zoom is CSS alone: it works where scripts are blocked
    probe = tmp_path / "zoom.html"
    probe.write_text(page.replace("</body>", _ZOOM + "</body>"))
    res = _chromium(tmp_path, "--dump-dom", "--window-size=1280,900", probe.as_uri())
    found = re.search(r'<pre id="medtl-zoom-check">([^<]*)</pre>', res.stdout)
    assert found, f"chromium printed no zoom check (exit {res.returncode}): {res.stderr[-500:]}"
    before, opened, left, top, width, height, vw, vh, checked, after = found.group(1).split()
    before, opened, after = float(before), float(opened), float(after)
    assert checked == "true"
    assert (float(left), float(top), float(width), float(height)) == (0, 0, float(vw), float(vh))
    assert opened > 2.5 * before, (before, opened)
    assert after == before
