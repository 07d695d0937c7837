"""What erasekit promises about the user's files (README: "What erasekit promises about your files").

Every test runs in a temporary directory holding a sentinel file that must survive; most also
check that a refused command created or removed nothing at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from erasekit import api
from erasekit.cli import app
from erasekit.core import outputs
from erasekit.core.erasure import Erasure
from erasekit.core.errors import ConfigError, CorruptFileError, NonFiniteError, OutputPathError
from erasekit.core.io import atomic_path
from erasekit.core.request import ErasureRequest
from erasekit.testing import tiny_pipeline

runner = CliRunner()
REQUEST = {"targets": [{"concept": "cat"}], "preserve": ["dog"]}
ESD_FAST = ["--set", "iterations=4", "--set", "ddim_steps=2", "--set", "lr=1e-4"]


def snapshot(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its size (directories: -1), to prove nothing was created or removed."""
    return {str(p.relative_to(root)): (-1 if p.is_dir() else p.stat().st_size) for p in sorted(root.rglob("*"))}


def one_line_error(result, *fragments: str) -> str:
    """The command failed with exit code 2 and exactly one line on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in result.output
    for f in fragments:
        assert f in err, err
    return err


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A current directory with a sentinel file and a sentinel subfolder that must survive."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("mine")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"not erasekit's")
    return tmp_path


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model counts as expensive work: these refusals must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("expensive work started before the input was checked")

    monkeypatch.setattr("erasekit.models.load_pipeline", refuse)


def saved_uce(tmp_path: Path) -> Path:
    pipe = tiny_pipeline("sd")
    out = tmp_path / "uce-erasure"
    api.erase(pipe, "uce", REQUEST, progress=False).save(out)
    return out


# -- 1. output paths --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["erase", "-c", "star", "-o", "."],
        ["erase", "-c", "star", "-o", ""],
        ["erase", "-c", "star", "-o", "/"],
        ["erase", "-c", "star", "-o", ".."],
        ["generate", "-p", "a star", "-o", "."],
        ["export", "E", "-o", "."],
        ["demo", "-o", "."],
        ["bench", "--out", "."],
        ["evaluate", "-c", "star", "-o", "."],
        ["testbed", "train", "--workdir", "."],
    ],
)
def test_protected_places_are_never_outputs(workdir, no_model_load, args):
    before = snapshot(workdir)
    one_line_error(runner.invoke(app, args))
    assert snapshot(workdir) == before


def test_home_package_and_model_directories_are_refused(workdir, monkeypatch, no_model_load):
    import erasekit

    home = workdir / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(workdir)
    one_line_error(runner.invoke(app, ["erase", "-c", "star", "-o", str(home)]), "home directory")
    package = Path(erasekit.__file__).parent
    one_line_error(runner.invoke(app, ["erase", "-c", "star", "-o", str(package / "new")]), "package")
    model = workdir / "model"
    tiny_pipeline("sd").save_pretrained(model)
    before = snapshot(workdir)
    one_line_error(runner.invoke(app, ["erase", "--model", str(model), "-c", "cat", "-o", str(model / "erased")]), "input")
    one_line_error(runner.invoke(app, ["export", "E", "--model", str(model), "-o", str(model)]), "input")
    one_line_error(runner.invoke(app, ["generate", "--model", str(model), "-p", "a cat", "-o", str(model / "g.png")]), "input")
    assert snapshot(workdir) == before


@pytest.mark.parametrize(
    "args",
    [
        ["erase", "-c", "star", "-o", "photos"],
        ["generate", "-p", "a star", "-o", "photos"],
        ["evaluate", "-c", "star", "-o", "photos"],
        ["export", "E", "-o", "photos"],
        ["demo", "-o", "photos"],
        ["testbed", "check", "-o", "photos"],
        ["erase", "-c", "star", "-o", "precious.txt"],
        ["generate", "-p", "a star", "-o", "precious.txt"],
        ["generate", "-p", "a star", "-o", "grid.gif"],
        ["generate", "-p", "a star", "-o", "photos/cat.jpg"],
        ["evaluate", "-c", "star", "-o", "precious.txt"],
        ["evaluate", "-c", "star", "-o", "report.yaml"],
        ["bench", "--report", "precious.txt"],
        ["erase", "-c", "star", "-o", "precious.txt/sub"],
    ],
)
def test_existing_foreign_paths_and_bad_suffixes_fail_before_any_work(workdir, no_model_load, args):
    before = snapshot(workdir)
    one_line_error(runner.invoke(app, args))
    assert snapshot(workdir) == before


@pytest.mark.testbed
def test_an_erasure_replaces_only_its_own_earlier_output(workdir):
    args = ["erase", "-c", "star", "-o", "out"]
    assert runner.invoke(app, args).exit_code == 0
    first = snapshot(workdir / "out")
    assert ".erasekit-output.json" in first and "erasure.json" in first
    assert runner.invoke(app, args).exit_code == 0  # its own output: replaced
    assert snapshot(workdir / "out").keys() == first.keys()
    (workdir / "out" / "notes.txt").write_text("my notes")
    one_line_error(runner.invoke(app, args), "notes.txt")
    assert (workdir / "out" / "notes.txt").read_text() == "my notes"
    # an output of another kind is not replaced either
    one_line_error(runner.invoke(app, ["export", "out", "-o", "out"]))
    assert (workdir / "precious.txt").read_text() == "mine"
    # an empty directory is fine
    (workdir / "empty").mkdir()
    assert runner.invoke(app, ["erase", "-c", "star", "-o", "empty"]).exit_code == 0


@pytest.mark.testbed
def test_reports_and_images_overwrite_only_what_erasekit_wrote(workdir):
    assert runner.invoke(app, ["generate", "-p", "a red star", "-n", "2", "-o", "g.png"]).exit_code == 0
    assert outputs.stamp_of(workdir / "g.png") == "image"
    assert runner.invoke(app, ["generate", "-p", "a red star", "-n", "2", "-o", "g.png"]).exit_code == 0
    (workdir / "mine.png").write_bytes((workdir / "g.png").read_bytes()[:8] + b"garbage")
    one_line_error(runner.invoke(app, ["generate", "-p", "a red star", "-n", "2", "-o", "mine.png"]), "did not write")
    for suffix in (".jpg", ".webp"):
        assert runner.invoke(app, ["generate", "-p", "a red star", "-n", "1", "-o", f"g{suffix}"]).exit_code == 0
        assert outputs.stamp_of(workdir / f"g{suffix}") == "image"


def test_output_checks_in_python():
    """The rules themselves, without the CLI."""
    with pytest.raises(OutputPathError, match="empty"):
        outputs.check_dir_output("", "erasure")
    with pytest.raises(ValueError):
        outputs.claim_collection("x", "erasure")


def test_a_killed_save_leaves_nothing_behind_and_modes_are_the_usual(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "er"
    stale = tmp_path / f".er.erasekit-tmp-{dead.pid}-abcd"
    (stale / "er").mkdir(parents=True)
    (stale / "er" / "half.safetensors").write_bytes(b"half")
    alive = tmp_path / f".er.erasekit-tmp-{os.getpid()}-live"  # a writer still running is left alone
    alive.mkdir()
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "f").write_text("1")
    assert not stale.exists() and alive.exists()
    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == 0o777 & ~mask
    assert ((target / "f").stat().st_mode & 0o777) == 0o666 & ~mask
    erasure = saved_uce(tmp_path)  # safetensors writes 0600 files; outputs get the usual modes
    assert {p.name: p.stat().st_mode & 0o777 for p in erasure.iterdir()} == {p.name: 0o666 & ~mask for p in erasure.iterdir()}
    # a swap killed between its two renames: the old output comes back
    os.replace(target, tmp_path / f".er.erasekit-old-{dead.pid}-x")
    with atomic_path(tmp_path / "er.json") as tmp:  # any write beside it of another name leaves it alone
        tmp.write_text("{}")
    assert not target.exists()
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "f").write_text("2")
    assert (target / "f").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".er.erasekit-old")) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(workdir, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    model = workdir / "model"
    tiny_pipeline("sd").save_pretrained(model)
    monkeypatch.setattr("erasekit.core.io.save_file", full)
    before = snapshot(workdir)
    one_line_error(runner.invoke(app, ["erase", "--model", str(model), "-c", "cat", "-o", "out"]), "No space left on device")
    assert snapshot(workdir) == before


# -- 2. non-finite numbers and damaged erasures ------------------------------------------------------
@pytest.mark.parametrize(
    "method, setting",
    [("uce", "erase_scale=inf"), ("uce", "lamb=nan"), ("esd", "lr=inf"), ("esd", "lr=nan"), ("esd", "negative_guidance=nan"),
     ("esd", "size=0"), ("esd", "iterations=-1"), ("esd", "lr=0"), ("esd", "lr=1e999"), ("rece", "epochs=abc"), ("esd", "iterations=2.5")],
)  # fmt: skip
def test_bad_numbers_fail_when_the_config_is_built(workdir, no_model_load, method, setting):
    before = snapshot(workdir)
    one_line_error(
        runner.invoke(app, ["erase", "--method", method, "-c", "star", "--set", setting, "-o", "out"]), setting.split("=")[0]
    )
    assert snapshot(workdir) == before


def test_a_method_that_returns_nan_saves_nothing(tmp_path, monkeypatch):
    from erasekit.core.registry import get_method

    spec = get_method("uce")
    real = spec.fn

    def broken(*args, **kwargs):
        result = real(*args, **kwargs)
        result.weights = {k: torch.full_like(v, float("nan")) for k, v in result.weights.items()}
        return result

    monkeypatch.setattr(spec, "fn", broken)
    with pytest.raises(NonFiniteError, match="NaN"):
        api.erase(tiny_pipeline("sd"), "uce", REQUEST, progress=False)


def test_nan_erasures_can_neither_be_saved_nor_loaded(tmp_path):
    out = saved_uce(tmp_path)
    erasure = Erasure.load(out)
    key = next(iter(erasure.weights))
    erasure.weights[key] = erasure.weights[key].clone()
    erasure.weights[key][0] = float("inf")
    with pytest.raises(NonFiniteError):
        erasure.save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    # written behind erasekit's back, with a matching checksum: still refused
    meta = json.loads((out / "erasure.json").read_text())
    save_file({k: v.contiguous() for k, v in erasure.weights.items()}, str(out / "weights.safetensors"))
    meta["tensors_sha256"] = erasure.checksum()
    (out / "erasure.json").write_text(json.dumps(meta))
    with pytest.raises(NonFiniteError):
        Erasure.load(out)


def test_damaged_erasures_are_refused_in_one_line(workdir):
    out = saved_uce(workdir)
    weights = load_file(str(out / "weights.safetensors"))
    key = next(iter(weights))
    good_bytes = (out / "weights.safetensors").read_bytes()
    good_meta = (out / "erasure.json").read_text()

    def cli_fails(*fragments):
        one_line_error(runner.invoke(app, ["evaluate", "--erasure", str(out), "-o", "eval.json"]), *fragments)
        one_line_error(runner.invoke(app, ["export", str(out), "-o", "exported"]), *fragments)
        assert not (workdir / "eval.json").exists() and not (workdir / "exported").exists()

    weights[key] = weights[key] + 1  # edited tensors: the checksum catches it
    save_file(weights, str(out / "weights.safetensors"))
    with pytest.raises(CorruptFileError, match="checksum"):
        Erasure.load(out)
    cli_fails("checksum")
    (out / "weights.safetensors").write_bytes(good_bytes[: len(good_bytes) // 2])  # truncated
    cli_fails("safetensors")
    (out / "weights.safetensors").write_bytes(b"garbage" * 20)
    cli_fails("safetensors")
    (out / "weights.safetensors").write_bytes(good_bytes)
    (out / "erasure.json").write_text("{not json")
    cli_fails("not valid JSON")
    (out / "erasure.json").write_bytes(b"\xff\xfe\x00")
    cli_fails("not valid JSON")
    meta = json.loads(good_meta)
    del meta["method"]
    (out / "erasure.json").write_text(json.dumps(meta))
    cli_fails("'method'")
    (out / "erasure.json").write_text(good_meta)
    assert Erasure.load(out).method == "uce"


def test_force_never_applies_a_wrongly_shaped_tensor(workdir):
    out = saved_uce(workdir)
    meta = json.loads((out / "erasure.json").read_text())
    weights = load_file(str(out / "weights.safetensors"))
    key = next(iter(weights))
    weights[key] = weights[key][:, :-1].contiguous()
    save_file(weights, str(out / "weights.safetensors"))
    meta.pop("tensors_sha256")  # as an erasure from before checksums: only the shape check is left
    (out / "erasure.json").write_text(json.dumps(meta))
    model = workdir / "model"
    tiny_pipeline("sd").save_pretrained(model)
    one_line_error(runner.invoke(app, ["export", str(out), "--model", str(model), "--force", "-o", "exported"]), "shape")
    assert not (workdir / "exported").exists()


# -- 3. resume only what was started ------------------------------------------------------------------
def test_resume_refuses_the_checkpoints_of_another_run(tmp_path):
    pipe = tiny_pipeline("sd")
    ckpt = tmp_path / "ckpt"
    args = dict(iterations=4, ddim_steps=2, lr=1e-3, checkpoint_every=2)
    api.erase(pipe, "esd", REQUEST, progress=False, checkpoint_dir=ckpt, **args)
    other = {"targets": [{"concept": "dog"}]}
    with pytest.raises(ConfigError, match="another run.*request"):
        api.erase(pipe, "esd", other, progress=False, checkpoint_dir=ckpt, resume=True, **args)
    with pytest.raises(ConfigError, match="another run.*params.lr"):
        api.erase(pipe, "esd", REQUEST, progress=False, checkpoint_dir=ckpt, resume=True, **dict(args, lr=5e-4))
    changed = tiny_pipeline("sd")
    with torch.no_grad():
        changed.unet.conv_in.weight.add_(1.0)
    with pytest.raises(ConfigError, match="another run.*base_model"):
        api.erase(changed, "esd", REQUEST, progress=False, checkpoint_dir=ckpt, resume=True, **args)
    # bookkeeping settings may change on resume; one complete step directory is kept
    api.erase(pipe, "esd", REQUEST, progress=False, checkpoint_dir=ckpt, resume=True, **dict(args, checkpoint_every=1))
    assert sorted(p.name for p in ckpt.iterdir()) == [".erasekit-output.json", "run.json", "step-00000004"]


def test_damaged_or_inconsistent_checkpoints_are_one_line_errors(tmp_path):
    pipe = tiny_pipeline("sd")
    ckpt = tmp_path / "ckpt"
    args = dict(iterations=4, ddim_steps=2, lr=1e-3, checkpoint_every=2)
    api.erase(pipe, "esd", REQUEST, progress=False, checkpoint_dir=ckpt, **args)
    step = ckpt / "step-00000004"
    state = (step / "state.json").read_text()
    params = (step / "params.safetensors").read_bytes()

    def resume():
        return api.erase(pipe, "esd", REQUEST, progress=False, checkpoint_dir=ckpt, resume=True, **args)

    (step / "state.json").write_text("{broken")
    with pytest.raises(CorruptFileError, match="damaged"):
        resume()
    (step / "state.json").write_text(state)
    (step / "params.safetensors").write_bytes(params[:100])
    with pytest.raises(CorruptFileError, match="damaged"):
        resume()
    (step / "params.safetensors").write_bytes(params)
    (step / "state.json").write_text(state.replace('"step": 4', '"step": 2'))  # files stamped with other steps
    with pytest.raises(CorruptFileError, match="steps"):
        resume()
    (step / "state.json").write_text(state)
    (ckpt / "run.json").write_text("{broken")
    with pytest.raises(CorruptFileError, match="run.json"):
        resume()


@pytest.mark.testbed
def test_cli_checkpoints_by_default_and_resume_only_the_same_run(workdir, monkeypatch):
    from erasekit.methods.diffusion.esd import ESDObjective

    original = ESDObjective.loss

    def crash_at_step_3(self, step, gen):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, step, gen)

    monkeypatch.setattr(ESDObjective, "loss", crash_at_step_3)
    args = ["erase", "--method", "esd", "-c", "star", *ESD_FAST, "--set", "checkpoint_every=1", "-o", "A"]
    assert runner.invoke(app, args).exit_code == 130
    assert (workdir / "A.checkpoints" / "step-00000003").is_dir() and not (workdir / "A").exists()
    monkeypatch.setattr(ESDObjective, "loss", original)
    # the same output, another concept: the checkpoints are not this run's
    other = ["erase", "--method", "esd", "-c", "circle", *ESD_FAST, "--set", "checkpoint_every=1", "-o", "A", "--resume"]
    one_line_error(runner.invoke(app, other), "another run")
    r = runner.invoke(app, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert Erasure.load(workdir / "A").info["training"]["start_step"] == 3
    assert not (workdir / "A.checkpoints").exists()  # default checkpoints go once the erasure is saved
    # named checkpoints stay; a file there is refused
    one_line_error(runner.invoke(app, [*args[:-2], "-o", "B", "--checkpoints", "precious.txt"]), "precious.txt")
    assert (workdir / "precious.txt").read_text() == "mine"


# -- 4. every failure is one line and exit 2 ----------------------------------------------------------
@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"targets: [st\xffar]", "UTF-8"),
        (b"targets: 5", "targets must be a list"),
        (b"targets: [star]\ntemplates: 5", "templates must be a list"),
        (b"targets: [star]\ntemplates: ['a {} {x}']", "template"),
        (b"targets: [star]\ntemplates: ['a {']", "template"),
        (b"targets: [{concept: star, synonyms: pentagram}]", "must be a list"),
        (b"targets: [{concept: null}]", "must be text"),
        (b"targets: [{concept: star, anchor: [a, b]}]", "must be text"),
        (b"targets: [star]\npreserve: [null]", "must be text"),
        (b"- star", "mapping"),
    ],
)
def test_bad_request_files(workdir, no_model_load, content, fragment):
    (workdir / "req.yaml").write_bytes(content)
    before = snapshot(workdir)
    one_line_error(runner.invoke(app, ["erase", "--request", "req.yaml", "-o", "out"]), fragment)
    assert snapshot(workdir) == before


def test_request_types_in_python():
    with pytest.raises(ConfigError, match="synonyms"):
        ErasureRequest.from_dict({"targets": [{"concept": "star", "synonyms": "pentagram"}]})
    with pytest.raises(ConfigError, match="synonyms"):
        ErasureRequest([{"concept": "star", "synonyms": "pentagram"}])
    for bad in ([None], [5], "star", [{"concept": "star", "colour": "red"}]):
        with pytest.raises(ConfigError):
            ErasureRequest(bad)


@pytest.mark.testbed
def test_text_longer_than_the_context_is_refused_not_cut(workdir):
    long = " ".join(["star"] * 100)
    one_line_error(runner.invoke(app, ["erase", "-c", long, "-o", "out"]), "tokens")
    one_line_error(runner.invoke(app, ["erase", "-c", "star", "--anchor", long, "-o", "out"]), "tokens")
    one_line_error(runner.invoke(app, ["generate", "-p", "a star", "--negative-prompt", long, "-o", "g.png"]), "negative prompt")
    assert not (workdir / "out").exists() and not (workdir / "g.png").exists()


def test_bench_set_must_name_a_benchmarked_method(workdir, no_model_load):
    one_line_error(runner.invoke(app, ["bench", "--methods", "esd", "--set", "esdd.iterations=1", "--out", "b"]), "esdd")
    one_line_error(runner.invoke(app, ["bench", "--methods", "esd", "--set", "esd.iterationz=1", "--out", "b"]), "iterationz")
    one_line_error(runner.invoke(app, ["bench", "--methods", "esd", "--set", "esd.lr=nan", "--out", "b"]), "lr")
    assert not (workdir / "b").exists()


@pytest.mark.testbed
def test_evaluate_checks_the_erasure_fits_before_generating(workdir, monkeypatch):
    model = workdir / "model"
    api.export_pipeline(saved_uce_testbed(workdir), "testbed", model)  # a testbed with an erasure already applied
    erasure = workdir / "e"

    def no_generation(*args, **kwargs):
        raise AssertionError("generated before checking the erasure")

    monkeypatch.setattr("erasekit.evaluation.testbed_eval.generate", no_generation, raising=False)
    err = one_line_error(
        runner.invoke(app, ["evaluate", "--model", str(model), "--erasure", str(erasure), "-o", "ev.json"]), "differ"
    )
    assert "--force" not in err


def saved_uce_testbed(workdir: Path) -> Path:
    r = runner.invoke(app, ["erase", "-c", "star", "-o", "e"])
    assert r.exit_code == 0, r.output
    return workdir / "e"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_missing_cuda_device_is_refused_before_loading(workdir, no_model_load):
    one_line_error(runner.invoke(app, ["erase", "-c", "star", "--device", "cuda", "-o", "out"]), "CUDA")
    one_line_error(runner.invoke(app, ["generate", "-p", "a star", "--device", "cuda", "-o", "g.png"]), "CUDA")
    one_line_error(runner.invoke(app, ["generate", "-p", "a star", "--device", "tpu9", "-o", "g.png"]), "device")


# -- 5. hostile values, every command -----------------------------------------------------------------
HOSTILE = {
    "number": ["nan", "inf", "-inf", "-1", "1e999", "abc", ""],
    "path": ["", ".", "/", "precious.txt", "photos"],
}
COMMANDS = [
    # (command line with {} for the value, kind of value)
    (["generate", "-p", "a star", "-n", "{}", "-o", "g.png"], "number"),
    (["generate", "-p", "a star", "--guidance", "{}", "-o", "g.png"], "number"),
    (["generate", "-p", "a star", "--steps", "{}", "-o", "g.png"], "number"),
    (["generate", "-p", "a star", "--seed", "{}", "-o", "g.png"], "number"),
    (["generate", "-p", "a star", "-o", "{}"], "path"),
    (["erase", "-c", "star", "--set", "lamb={}", "-o", "out"], "number"),
    (["erase", "--method", "esd", "-c", "star", "--set", "lr={}", "-o", "out"], "number"),
    (["erase", "--method", "esd", "-c", "star", "--lora-rank", "{}", "-o", "out"], "number"),
    (["erase", "--method", "esd", "-c", "star", "--stop-at-ua", "{}", "-o", "out"], "number"),
    (["erase", "-c", "star", "-o", "{}"], "path"),
    (["erase", "-c", "star", "--request", "{}", "-o", "out"], "path"),
    (["export", "{}", "-o", "exported"], "path"),
    (["export", "E", "-o", "{}"], "path"),
    (["evaluate", "-c", "star", "--seeds", "{}", "-o", "ev.json"], "number"),
    (["evaluate", "-c", "star", "--contexts", "{}", "-o", "ev.json"], "number"),
    (["evaluate", "--erasure", "{}", "-o", "ev.json"], "path"),
    (["evaluate", "-c", "star", "-o", "{}"], "path"),
    (["bench", "--seeds", "{}", "--out", "b"], "number"),
    (["bench", "--set", "uce.lamb={}", "--out", "b"], "number"),
    (["bench", "--out", "{}"], "path"),
    (["bench", "--out", "b", "--report", "{}"], "path"),
    (["demo", "--seeds", "{}", "-o", "d"], "number"),
    (["demo", "-o", "{}"], "path"),
    (["testbed", "check", "--seeds", "{}", "-o", "gate.json"], "number"),
    (["testbed", "check", "-o", "{}"], "path"),
    (["testbed", "train", "--workdir", "{}"], "path"),
    (["testbed", "train", "--workdir", "w", "--out", "{}"], "path"),
]


@pytest.mark.parametrize("command, kind", COMMANDS, ids=lambda c: " ".join(c) if isinstance(c, list) else c)
def test_hostile_values_give_one_line_and_touch_nothing(workdir, no_model_load, command, kind):
    before = snapshot(workdir)
    for value in HOSTILE[kind]:
        args = [a.replace("{}", value) for a in command]
        result = runner.invoke(app, args)
        one_line_error(result)
        assert snapshot(workdir) == before, args
