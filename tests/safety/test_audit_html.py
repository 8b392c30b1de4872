"""The HTML audit report: self-contained, every plot a decodable PNG, and it opens in headless
Chromium without console errors (F1/F3: the report a human reads is complete)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from safetwin.safety.audit import AuditConfig, build_report
from safetwin.safety.audit_html import PLOTS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audit"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Injected into a *copy* of the report only: records script errors, console.error calls and
# failed resource loads from the start of parsing, then lists every plot image after load.
PROBE_HEAD = """<script>window.__errs=[];window.addEventListener("error",function(e){var t=e.target;
window.__errs.push(t&&t.tagName?("resource "+t.tagName+" "+(t.src||t.href)):("error "+e.message));},true);
var ce=console.error;console.error=function(){window.__errs.push("console.error "+
Array.prototype.join.call(arguments," "));ce.apply(console,arguments);};</script>"""
PROBE_TAIL = """<script>window.addEventListener("load",function(){var r=[];
document.querySelectorAll("figure img").forEach(function(i){r.push([i.parentElement.id,i.complete,
i.naturalWidth,i.naturalHeight])});var p=document.createElement("pre");p.id="probe";
p.textContent=JSON.stringify({imgs:r,errors:window.__errs});document.body.appendChild(p);});</script>"""


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audit_html")
    out = {}
    for name in ("train_run", "deploy_run"):
        run = Path(shutil.copytree(FIXTURES / name, root / name))
        build_report(run, AuditConfig(min_episodes=10), junit_xml=FIXTURES / "junit.xml", tests_root=FIXTURES)
        out[name] = run / "audit" / "report.html"
    return out


@pytest.mark.parametrize("name", ["train_run", "deploy_run"])
def test_html_is_self_contained_with_every_plot(reports: dict[str, Path], name: str) -> None:
    html = reports[name].read_text(encoding="utf-8")
    assert "<script" not in html.lower(), "the report needs no JavaScript"
    assert not re.search(r"(?:src|href)\s*=\s*\"(?!data:)", html), "no external resources"
    assert "http://" not in html and "https://" not in html and "@import" not in html
    for pid in PLOTS:
        match = re.search(rf'<figure id="plot-{pid}"><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', html)
        assert match, f"plot {pid} missing"
        image = Image.open(io.BytesIO(base64.b64decode(match.group(1))))
        assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 100
        assert np.unique(np.asarray(image.convert("L"))).size > 2, f"plot {pid} is blank"
    report = json.loads((reports[name].parent / "report.json").read_text())
    for req in report["requirements"]:
        assert req["id"] in html and req["status"] in html


def _run_chromium(page: Path, tmp_path: Path) -> tuple[dict, str]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"probe did not run; stderr: {proc.stderr[-2000:]}"
    text = match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    console = "\n".join(line for line in proc.stderr.splitlines() if ":CONSOLE" in line)
    return json.loads(text), console


def _probe_copy(report: Path, dest: Path, inject: str = "") -> Path:
    html = report.read_text(encoding="utf-8")
    html = html.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("<body>", "<body>" + inject, 1)
    dest.write_text(html.replace("</body>", PROBE_TAIL + "</body>"), encoding="utf-8")
    return dest


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (run `make testdeps` "
                                             "or `apt-get install -y chromium`)")
@pytest.mark.parametrize("name", ["train_run", "deploy_run"])
def test_html_opens_in_headless_chromium_without_errors(reports: dict[str, Path], name: str,
                                                        tmp_path: Path) -> None:
    result, console = _run_chromium(_probe_copy(reports[name], tmp_path / "page.html"), tmp_path)
    assert result["errors"] == [] and console == "", (result["errors"], console)
    shown = {pid: (complete, w, h) for pid, complete, w, h in result["imgs"]}
    assert set(shown) == {f"plot-{pid}" for pid in PLOTS}
    for pid, (complete, width, height) in shown.items():
        assert complete and width > 200 and height > 100, f"{pid} did not render"


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed")
def test_chromium_probe_catches_errors(reports: dict[str, Path], tmp_path: Path) -> None:
    """Negative control: the probe reports a failed resource and a script error when present."""
    page = _probe_copy(reports["train_run"], tmp_path / "bad.html",
                       inject='<img src="missing.png"><script>undefinedFunction()</script>')
    result, _ = _run_chromium(page, tmp_path)
    assert any("missing.png" in e for e in result["errors"])
    assert any("undefinedFunction" in e for e in result["errors"])
