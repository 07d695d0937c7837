"""The HTML report: built from real result JSON (a judged evaluation and an attack on a tiny pipeline,
a bench table, images), self-contained (every image embedded), refusing foreign files, and rendered
in headless Chromium, where every image and plot must decode (the screenshot is kept)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from erasekit import api
from erasekit.cli import app
from erasekit.core.errors import ConfigError, OutputPathError
from erasekit.core.outputs import write_report
from erasekit.report.html import kind_of_result, render_report, write_html_report
from erasekit.testing import tiny_clip_dir, tiny_pipeline

CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A judged evaluation (with its image grid), an attack (with its trial grid) and a bench table."""
    t = tmp_path_factory.mktemp("results")
    clip = tiny_clip_dir(t / "clip")
    (t / "cats.txt").write_text("a cat\na photo of a cat\n")
    pipe = tiny_pipeline("sd")
    erasure = api.erase(pipe, "uce", {"targets": ["cat"]}, progress=False)
    api.evaluate(pipe, erasure, ["cat"], out=t / "eval.json", judge=f"clip:clip={clip}", prompts=t / "cats.txt", steps=2,
                 progress=False)  # fmt: skip
    api.attacking.attack(pipe, erasure, "soft-prompt", "cat", budget=2, seeds=1, judge=f"clip:clip={clip}", prompt_file=t / "cats.txt",
                         steps=2, progress=False, out=t / "attack.json", grid=t / "attack.png")  # fmt: skip
    runs = [{"method": m, "concept": "star", "ua": ua, "ira": ira, "cra": 0.9, "cost": {"method": m, "erase_seconds": s}}
            for m, ua, ira, s in (("uce", 0.9, 0.8, 0.4), ("esd", 0.95, 0.6, 30.0))]  # fmt: skip
    write_report(t / "results.json", {"runs": runs}, "bench-results")
    return t


def test_every_result_kind_is_recognised_and_foreign_files_are_refused(results, tmp_path):
    assert kind_of_result(json.loads((results / "eval.json").read_text())) == "judged"
    assert kind_of_result(json.loads((results / "attack.json").read_text())) == "attack"
    assert kind_of_result(json.loads((results / "results.json").read_text())) == "bench"
    (tmp_path / "mine.json").write_text('{"hello": 1}')
    with pytest.raises(ConfigError, match="not an erasekit result"):
        render_report([tmp_path / "mine.json"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="reads result JSON and PNG"):
        render_report([tmp_path / "notes.txt"])
    with pytest.raises(ConfigError, match="holds no erasekit results"):
        render_report([tmp_path])
    (tmp_path / "precious.html").write_text("<p>mine</p>")
    with pytest.raises(OutputPathError):
        write_html_report([results / "eval.json"], tmp_path / "precious.html")


def test_the_page_is_self_contained_with_judge_metrics_images_and_plots(results, tmp_path):
    page = write_html_report([results], tmp_path / "report.html").read_text()
    assert 'src="http' not in page and "<link" not in page  # nothing to fetch
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page)
    assert "eval.png" in images and "attack.png" in images  # the evaluation's and the attack's own images
    assert {"UA against IRA per method", "ASR against budget", "time to erase per method"} <= set(images)
    assert "judge" in page and "clip" in page and "soft-prompt" in page and "[" in page  # intervals shown
    again = write_html_report([results], tmp_path / "report.html")  # erasekit's own page is replaced
    assert again.read_text() == page


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (.ci/run installs chromium-headless-shell)")
def test_the_report_renders_in_headless_chromium(results, tmp_path):
    out = tmp_path / "report.html"
    r = CliRunner().invoke(app, ["report", str(results), "--out", str(out), "--title", "tiny"])
    assert r.exit_code == 0, r.output
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded and int(loaded.group(1)) == int(loaded.group(2)) >= 5, dom[:300]
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=120
    )
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # a page with tables and pictures, not a blank one
    keep = os.environ.get("ERASEKIT_TEST_ARTIFACTS")
    if keep:
        shutil.copyfile(shot, os.path.join(keep, "report.png"))
