"""The shipped testbed: offline loading, the judge's accuracy, deterministic generation, the main job."""

import os
from pathlib import Path

import numpy as np
import pytest
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.generation import SamplingConfig, generate
from erasekit.models import testbed_dir as shipped_dir
from erasekit.testbeds.image import gate
from erasekit.testbeds.image.classifier import evaluate_classifier

runner = CliRunner()
pytestmark = pytest.mark.testbed


def test_testbed_path_command():
    result = runner.invoke(app, ["testbed", "path"])
    assert result.exit_code == 0
    assert Path(result.output.strip()) == shipped_dir()


def test_shipped_pipeline_loads_offline_with_diffusers():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    pipe = StableDiffusionPipeline.from_pretrained(shipped_dir(), safety_checker=None)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    names = [n for n, _ in pipe.unet.named_modules()]
    assert sum(n.endswith("attn2.to_k") for n in names) >= 3 and sum(n.endswith("attn2.to_v") for n in names) >= 3
    weights = sum(p.stat().st_size for p in shipped_dir().rglob("*.safetensors"))
    assert weights <= 40 * 2**20
    assert not list(shipped_dir().rglob("*.bin")) and not list(shipped_dir().rglob("*.pt"))


def test_judge_is_at_least_99_percent_accurate_per_head(judge):
    acc = evaluate_classifier(judge, n=3000, seed=4242)
    assert min(acc.values()) >= 0.99, acc


def test_generation_is_deterministic_and_independent_of_batching(testbed_pipe):
    prompts, seeds = ["a red filled star on a black background", "a blue dotted heart on a gray background"], [3, 4]
    fast = SamplingConfig(steps=8, batch_size=2)
    a = generate(testbed_pipe, prompts, seeds, fast, progress=False)
    b = generate(testbed_pipe, prompts, seeds, SamplingConfig(steps=8, batch_size=1), progress=False)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    c = generate(testbed_pipe, prompts, [5, 6], fast, progress=False)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_shipped_model_draws_what_it_is_told(testbed_pipe, judge):
    """A small slice of the quality gate (the full gate's JSON is in docs/testbed-gate.json)."""
    grid = gate.grid_prompts()[::8]
    images = generate(testbed_pipe, [g.prompt for g in grid], [0] * len(grid), progress=False)
    pred = judge.predict(images)
    from erasekit.testbeds.image.classifier import LABEL_NAMES

    for domain in ("shape", "colour", "background"):
        hits = [LABEL_NAMES[domain][pred[domain][i]] == getattr(g.expected, domain) for i, g in enumerate(grid)]
        assert np.mean(hits) >= 0.8, (domain, np.mean(hits))


def test_generate_command_writes_a_labelled_grid(tmp_path):
    out = tmp_path / "grid.png"
    result = runner.invoke(
        app,
        ["generate", "--model", "testbed", "--prompt", "a red star", "-n", "3", "--seed", "1", "--steps", "5", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    img = Image.open(out)
    assert img.width > 3 * 32 * 4 and img.height > 32 * 4


def test_too_long_prompt_is_a_clear_error(tmp_path):
    prompt = " ".join(["red"] * 40)
    result = runner.invoke(app, ["generate", "--prompt", prompt, "-n", "1", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2
    assert "tokens" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--seeds", "1"])
    assert result.exit_code == 0, result.output
    for name in (
        "grid.png",
        "gate.json",
        "eval-uce.json",
        "eval-esd.json",
        "before_after.png",
        "erasure-uce/erasure.json",
        "erasure-esd/erasure.json",
        "report.html",
    ):
        assert (tmp_path / name).is_file(), name
    assert "shape accuracy" in result.output and "uce erased star, zorbo" in result.output and "esd erased star" in result.output
    reports = next(line for line in result.output.splitlines() if line.startswith("reports: "))
    named = reports[len("reports: ") :].rsplit("  (", 1)[0].split(", ")
    assert len(named) == 4 and all(os.path.isfile(p) for p in named), named  # the printed paths exist
    verdicts = [line for line in result.output.splitlines() if "brought it back" in line]
    assert "red team (" in result.output and len(verdicts) == 3  # uce star, uce zorbo, esd star
    page = (tmp_path / "report.html").read_text()
    assert f"HTML report: {tmp_path / 'report.html'}" in result.output and page.count("data:image/png;base64,") >= 4
    import json

    for method in ("uce", "esd"):
        ev = json.loads((tmp_path / f"eval-{method}.json").read_text())
        assert ev["ua"] > ev["base"]["ua"], method  # each erasure measurably removes its concepts
    # its own folder can be run again: erasekit's files are replaced, a file of yours beside them stays
    # (the demo checks every file it will write before any work, so checking them again is the rerun's
    # verdict on the folder; a full second run would only repeat the minutes above)
    from erasekit.api.demo import _check_demo_outputs
    from erasekit.core.outputs import claim_collection

    (tmp_path / "notes.txt").write_text("mine")
    assert _check_demo_outputs(tmp_path) == tmp_path
    claim_collection(tmp_path, "demo", what="demo directory")
    assert (tmp_path / "notes.txt").read_text() == "mine"
