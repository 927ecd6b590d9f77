"""The report in a real headless browser (Debian's chromium): images decode, no errors.

Slow (installs chromium with apt-get when it is missing, as on a fresh CI machine).
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from ntkit.cli import run

pytestmark = pytest.mark.slow

# Injected into a copy of the page (the report itself has no script): records errors from
# the start, then after load writes what it saw into the DOM that --dump-dom prints.
_PROBE_HEAD = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(
  (e.message || ('failed to load ' + (e.target && (e.target.src || e.target.tagName))))), true);
for (const level of ['error', 'warn']) {
  const orig = console[level];
  console[level] = (...a) => { window.__errors.push(level + ': ' + a.join(' ')); orig(...a); };
}
</script>"""
_PROBE_TAIL = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images).map(i => ({
    complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({imgs: imgs, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    # a fresh Debian machine (CI): install it, as .ci/run would
    steps = (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
    )
    for cmd in steps:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            pytest.fail(f"could not install chromium ({' '.join(cmd)}): {res.stderr[-2000:]}")
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("apt-get installed chromium but it is not on PATH")
    return path


def _browser(exe: str, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=180)


def test_report_renders_in_a_headless_browser(tmp_path, capsys):
    exe = _chromium()
    code = run(
        [
            "report",
            "--quick",
            "--no-progress",
            "--n-train",
            "120",
            "--n-test",
            "60",
            "--max-steps",
            "50",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    page = tmp_path / "report.html"
    html = page.read_text()

    probe = tmp_path / "probe.html"
    probe.write_text(
        html.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace(
            "</body>", _PROBE_TAIL + "</body>", 1
        )
    )
    res = _browser(exe, "--dump-dom", probe.as_uri())
    assert res.returncode == 0, res.stderr[-3000:]
    found = re.search(r"<pre id=\"probe\">(.*?)</pre>", res.stdout, re.S)
    assert found, res.stdout[-2000:] + res.stderr[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert seen["errors"] == []
    assert len(seen["imgs"]) == html.count("<img ") >= 4
    for img in seen["imgs"]:  # every embedded PNG decoded to a real picture
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, img

    shot = tmp_path / "shot.png"
    res = _browser(exe, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    assert shot.exists(), res.stderr[-3000:]
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    image = Image.open(shot).convert("L")
    stat = ImageStat.Stat(image)
    assert stat.stddev[0] > 10  # not a blank page: text, tables and figures
    assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50
    Path(shot).replace(tmp_path / "report_screenshot.png")
