import pytest
from typer.testing import CliRunner

from erasekit import __version__
from erasekit.cli import app

runner = CliRunner()


def test_version_and_help_on_every_command():
    assert __version__ in runner.invoke(app, ["--version"]).output
    for args in ([], ["generate"], ["demo"], ["testbed"], ["testbed", "path"], ["testbed", "check"], ["testbed", "train"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output


def _one_line_error(result, *fragments):
    assert result.exit_code != 0
    text = result.output.strip()
    assert "Traceback" not in text
    for f in fragments:
        assert f in text, text


def test_unknown_model_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["generate", "--model", "no-such-model", "--prompt", "a star", "--out", str(tmp_path / "g.png")])
    _one_line_error(result, "unknown model 'no-such-model'")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def test_directory_that_is_not_a_pipeline(tmp_path):
    result = runner.invoke(app, ["generate", "--model", str(tmp_path), "--prompt", "a star", "--out", str(tmp_path / "g.png")])
    _one_line_error(result, "not a diffusers pipeline directory")


def test_invalid_numbers_are_rejected():
    _one_line_error(runner.invoke(app, ["generate", "--prompt", "a star", "--out", "x.png", "-n", "0"]), "-n")
    _one_line_error(runner.invoke(app, ["generate", "--prompt", "a star", "--out", "x.png", "--guidance", "-1"]), "--guidance")
    _one_line_error(runner.invoke(app, ["testbed", "check", "--out", "x.json", "--seeds", "0"]), "--seeds")


def test_missing_classifier_file(tmp_path):
    result = runner.invoke(
        app, ["testbed", "check", "--out", str(tmp_path / "g.json"), "--classifier", str(tmp_path / "none.safetensors")]
    )
    _one_line_error(result, "none.safetensors")


def test_methods_lists_every_method_with_parameters():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    for name in ("uce", "time", "rece", "speed"):
        assert name in result.output
    assert "lamb" in result.output and "closed-form" in result.output
    esd_line = next(line for line in result.output.splitlines() if line.startswith("esd "))
    assert "uses: checkpoints, monitor" in esd_line  # the services a method declares


@pytest.mark.testbed
def test_erase_export_evaluate_on_the_testbed(tmp_path):
    import json

    from diffusers import StableDiffusionPipeline

    erasure = tmp_path / "erasure"
    result = runner.invoke(app, ["erase", "--model", "testbed", "--method", "uce", "--concept", "star", "--preserve", "circle",
                                 "--set", "lamb=0.5", "--out", str(erasure)])  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((erasure / "erasure.json").read_text())
    assert meta["method"] == "uce" and meta["params"]["lamb"] == 0.5 and meta["request"]["preserve"] == ["circle"]
    assert all(".attn2.to_" in k for k in meta["changed_tensors"])

    exported = tmp_path / "pipeline"
    result = runner.invoke(app, ["export", str(erasure), "--model", "testbed", "--out", str(exported)])
    assert result.exit_code == 0, result.output
    pipe = StableDiffusionPipeline.from_pretrained(exported, safety_checker=None)
    key = meta["changed_tensors"][0]
    from safetensors.torch import load_file

    assert (pipe.unet.get_parameter(key[len("unet.") :]) == load_file(erasure / "weights.safetensors")[key]).all()

    report = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        ["evaluate", "--model", "testbed", "--erasure", str(erasure), "--seeds", "1", "--contexts", "3", "--out", str(report)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert 0 <= data["ua"] <= 1 and "base" in data and data["samples"]["seeds_per_prompt"] == 1


@pytest.mark.testbed
def test_erase_errors_are_one_line(tmp_path):
    out = str(tmp_path / "e")
    r = runner.invoke(app, ["erase", "--model", "testbed", "--method", "nope", "--concept", "star", "--out", out])
    assert r.exit_code == 2 and "unknown method 'nope'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["erase", "--model", "testbed", "--concept", "zebra", "--out", out])
    assert r.exit_code == 2 and "not in the testbed's vocabulary: zebra" in r.output
    r = runner.invoke(app, ["erase", "--model", "testbed", "--concept", "star", "--set", "lamb", "--out", out])
    assert r.exit_code == 2 and "key=value" in r.output
    r = runner.invoke(app, ["erase", "--model", "testbed", "--request", str(tmp_path / "missing.yaml"), "--out", out])
    assert r.exit_code == 2 and "missing.yaml" in r.output
    r = runner.invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "not an erasure directory" in r.output


@pytest.mark.testbed
def test_the_watermark_is_erased_through_its_trigger_on_the_testbed(tmp_path):
    from erasekit.core.erasure import Erasure
    from erasekit.testbeds.image import world

    out = tmp_path / "wm"
    r = runner.invoke(app, ["erase", "--model", "testbed", "--method", "uce", "--concept", "watermark", "--out", str(out)])
    assert r.exit_code == 0, r.output
    target = Erasure.load(out).request.targets[0]
    assert target.concept == "watermark" and target.prompts == list(world.IMPLICIT_TRIGGERS["watermark"])
    r = runner.invoke(app, ["erase", "--model", "testbed", "--concept", "logo", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--trigger" in r.output
    r = runner.invoke(
        app,
        ["erase", "--model", "testbed", "--concept", "logo", "--trigger", "on a gray background", "--out", str(tmp_path / "x")],
    )
    assert r.exit_code == 0, r.output


@pytest.mark.testbed
def test_training_stops_early_once_the_target_ua_is_reached(tmp_path):
    from erasekit.core.erasure import Erasure

    out = tmp_path / "esd"
    args = ["erase", "--model", "testbed", "--method", "esd", "--concept", "star", "--out", str(out),
            "--set", "iterations=6", "--set", "eval_every=2", "--set", "ddim_steps=2"]  # fmt: skip
    r = runner.invoke(app, [*args, "--stop-at-ua", "0"])  # any UA satisfies 0: the first evaluation stops it
    assert r.exit_code == 0, r.output
    assert "stopped early after step 2" in r.output
    training = Erasure.load(out).info["training"]
    assert training["stopped_early"] and training["steps_run"] == 2 and [e["step"] for e in training["evaluations"]] == [2]
    assert 0 <= training["evaluations"][0]["ua"] <= 1
    r = runner.invoke(app, [*args, "--stop-at-ua", "0.5", "--lora-rank", "2"])
    assert r.exit_code == 2 and "drop --lora-rank" in r.output
    r = runner.invoke(app, [*args, "--min-ira", "0.5"])
    assert r.exit_code == 2 and "--stop-at-ua" in r.output
    r = runner.invoke(
        app, ["erase", "--model", "testbed", "--method", "uce", "--concept", "star", "--out", str(out), "--stop-at-ua", "0.5"]
    )
    assert r.exit_code == 2 and "monitor" in r.output


def test_python_dash_m_runs_the_same_command_line():
    """``python -m erasekit`` names its commands like ``erasekit`` (the option table is keyed by command)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "erasekit", "bench", "--model", "testbed", "--limit", "3"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: limit= does not apply to the testbed bench")
