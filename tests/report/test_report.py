"""report.html: its content, that it is self-contained, that it renders in a real browser (headless
Chromium) without console errors, and the events of interrupted, resumed and failed runs."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess

import pytest

from resnetlab import cli
from resnetlab.errors import Interrupted, TrainingError, UsageError
from resnetlab.report.events import read_events
from resnetlab.report.html import SECTIONS, build_report, write_report
from resnetlab.report.mistakes import read_mistakes_csv
from resnetlab.report.runs import run_state
from resnetlab.train.checkpoint import load_checkpoint

# curves, confusion, mistakes, and the mistakes' Grad-CAM row where Captum is installed
REPORT_IMAGES = 4 if importlib.util.find_spec("captum") else 3

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed here (apt-get install chromium; .ci/run installs it); "
    "the report is not rendered in a browser",
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]
# A test-only script, added to a copy of the page: once loaded, it counts the images that decoded.
IMAGE_CHECK = """<script>window.addEventListener("load", () => { const all = [...document.images];
document.body.setAttribute("data-images", all.filter(i => i.complete && i.naturalWidth > 0).length + "/" + all.length);
});</script></body>"""


def chromium(page, tmp_path, *args) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[(:]", line)]


def with_image_check(page, out):
    html = page.read_text(encoding="utf-8")
    html = html.replace("img-src data:;", "img-src data:; script-src 'unsafe-inline';").replace(
        "</body>", IMAGE_CHECK
    )
    out.write_text(html, encoding="utf-8")
    return out


def decoded_images(dom: str) -> tuple[int, int]:
    found = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert found, "the image check did not run: " + dom[:300]
    return int(found[1]), int(found[2])


@pytest.mark.needs_fashion_mnist
def test_report_holds_every_section_and_is_self_contained(finished_run):
    page = (finished_run / "report.html").read_text(encoding="utf-8")
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    config = json.loads((finished_run / "config.json").read_text())
    summary = json.loads((finished_run / "summary.json").read_text())
    assert config["versions"]["torch"] in page and f"{summary['kept_test_acc']:.4f}" in page
    assert "Ankle boot" in page and "best.safetensors" in page
    # nothing to fetch: every image is a data URI, no scripts, no links, no remote URL anywhere
    assert re.findall(r'src="([^"]{0,22})', page) == ["data:image/png;base64,"] * REPORT_IMAGES
    assert (
        "<script" not in page
        and "<link" not in page
        and "http://" not in page
        and "https://" not in page
    )
    assert "Content-Security-Policy" in page
    first = read_mistakes_csv(finished_run / "mistakes.csv")[0]
    assert f"<td>{first['predicted']}</td>" in page
    assert [e["event"] for e in read_events(finished_run)] == ["start", "finish"]


@needs_chromium
@pytest.mark.needs_fashion_mnist
def test_report_renders_in_headless_chromium(finished_run, tmp_path):
    page = finished_run / "report.html"
    shot = tmp_path / "report.png"
    r = chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,4200")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    assert console_messages(r.stderr) == [], (
        "the page logged console messages (blocked loads, errors)"
    )
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 4200)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert (
            colours is not None and len(colours) > 200
        )  # text, tables and the figures, not a blank page
    r = chromium(
        with_image_check(page, tmp_path / "checked.html"),
        tmp_path,
        "--dump-dom",
        "--virtual-time-budget=5000",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert decoded_images(r.stdout) == (REPORT_IMAGES, REPORT_IMAGES)
    for sid in SECTIONS:
        assert re.search(rf'<section id="{sid}">\s*<h2>', r.stdout), (
            f"section {sid} is not in the rendered page"
        )
    assert console_messages(r.stderr) == []


@needs_chromium
@pytest.mark.needs_fashion_mnist
def test_the_browser_check_catches_a_broken_page(finished_run, tmp_path):
    """The checks above can fail: a corrupt image and a remote one are both caught."""
    html = (finished_run / "report.html").read_text(encoding="utf-8")
    html = html.replace("data:image/png;base64,iVBOR", "data:image/png;base64,XXXXX", 1)
    html = html.replace("</body>", '<img alt="remote" src="https://example.com/x.png"></body>')
    broken = tmp_path / "broken.html"
    broken.write_text(html, encoding="utf-8")
    r = chromium(
        with_image_check(broken, tmp_path / "checked.html"),
        tmp_path,
        "--dump-dom",
        "--virtual-time-budget=5000",
    )
    assert decoded_images(r.stdout) == (REPORT_IMAGES - 1, REPORT_IMAGES + 1)
    assert any("example.com" in line for line in console_messages(r.stderr))


@pytest.mark.needs_fashion_mnist
def test_interrupted_then_resumed_run_tells_what_happened_when(
    tmp_path, monkeypatch, train_tiny, ctrl_c_at
):
    ctrl_c_at(11)  # Ctrl-C during epoch 2 of 2 (8 steps an epoch)

    out = tmp_path / "r"
    with pytest.raises(Interrupted):
        train_tiny(out, epochs=2)
    monkeypatch.undo()
    assert run_state(out) == "interrupted"
    assert [e["event"] for e in read_events(out)] == ["start", "interrupt"]
    stopped = load_checkpoint(out)["state"]
    assert stopped["epoch"] == 1 and stopped["step_in_epoch"] > 0
    page = build_report(out)  # a stopped run has a report too: what it has so far
    assert (
        f"interrupted in epoch 2 at step {stopped['step_in_epoch']}" in page
        and "mistakes.csv is missing" in page
    )

    from resnetlab.train import train

    train(resume=out, verbose=False)
    events = read_events(out)
    assert [e["event"] for e in events] == ["start", "interrupt", "resume", "finish"]
    assert (events[2]["epoch"], events[2]["step_in_epoch"]) == (1, stopped["step_in_epoch"])
    page = (out / "report.html").read_text(encoding="utf-8")
    assert (
        f"resumed in epoch 2 at step {stopped['step_in_epoch']}" in page
        and "1 stop(s), 1 resume(s)" in page
    )
    assert run_state(out) == "finished"


@pytest.mark.needs_fashion_mnist
def test_failed_run_is_recorded(tmp_path, train_tiny):
    out = tmp_path / "nan"
    with pytest.raises(TrainingError):
        train_tiny(out, epochs=2, lr=1e30)
    events = read_events(out)
    assert [e["event"] for e in events] == ["start", "failed"] and events[1][
        "error"
    ] == "TrainingError"
    assert run_state(out) == "failed"
    assert "failed: TrainingError: the training loss became" in build_report(out)


@pytest.mark.needs_fashion_mnist
def test_report_command(run_copy, finished_run, tmp_path, capsys):
    # a finished run made before mistakes existed: `report` computes them (same weights, same test subset)
    (run_copy / "mistakes.csv").unlink()
    (run_copy / "confusion.csv").unlink()
    (run_copy / "report.html").unlink()
    assert cli.main(["report", str(run_copy)]) == 0
    assert capsys.readouterr().out.strip() == str(run_copy / "report.html")
    assert read_mistakes_csv(run_copy / "mistakes.csv") == read_mistakes_csv(
        finished_run / "mistakes.csv"
    )
    assert (run_copy / "confusion.csv").read_text() == (finished_run / "confusion.csv").read_text()
    assert cli.main(["report", str(run_copy), "--out", str(tmp_path / "elsewhere.html")]) == 0
    assert '<section id="mistakes">' in (tmp_path / "elsewhere.html").read_text()

    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "nothing"):
        assert cli.main(["report", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "run folder" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="not a run folder"):
        write_report(tmp_path / "empty")
    # a finished run whose kept weights are gone: one line, exit 2
    (run_copy / "mistakes.csv").unlink()
    (run_copy / "best.safetensors").unlink()
    assert cli.main(["report", str(run_copy)]) == 2
    assert "holds no best.safetensors" in capsys.readouterr().err
