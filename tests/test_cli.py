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
    result = runner.invoke(app, ["testbed", "check", "--out", str(tmp_path / "g.json"), "--classifier", str(tmp_path / "none.safetensors")])
    _one_line_error(result, "none.safetensors")
