"""The Python API users expect from the top-level package, and the shape of the registries."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import erasekit
from erasekit.cli import app
from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError, IncompatibleErasureError
from erasekit.core.registry import METHODS, register_method
from erasekit.testing import tiny_pipeline

runner = CliRunner()


def weights_of(pipe) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_top_level_erase_save_load_apply(tmp_path):
    pipe = tiny_pipeline("sd")
    before = weights_of(pipe)
    erasure = erasekit.erase(pipe, "uce", "cat")  # a concept name is a request
    assert isinstance(erasure, erasekit.Erasure) and same(weights_of(pipe), before)
    erasure.save(tmp_path / "e")
    loaded = erasekit.Erasure.load(tmp_path / "e")
    with loaded.applied(pipe) as p:
        assert p is pipe and not same(weights_of(pipe), before)
    assert same(weights_of(pipe), before)
    # apply / remove per model: two models at once, no shared state
    other = tiny_pipeline("sd")
    loaded.apply(pipe)
    loaded.apply(other)
    with pytest.raises(IncompatibleErasureError, match="already applied"):
        loaded.apply(pipe)
    loaded.remove(pipe)
    assert same(weights_of(pipe), before) and not same(weights_of(other), before)
    loaded.remove(other)
    with pytest.raises(IncompatibleErasureError, match="nothing to remove"):
        loaded.remove(other)
    handle = loaded.applied(pipe)
    handle.remove()
    with pytest.raises(IncompatibleErasureError, match="already removed"):
        handle.remove()


@pytest.mark.testbed
def test_top_level_evaluate_takes_a_pipeline_and_an_erasure(testbed_pipe):
    erasure = erasekit.erase(testbed_pipe, "uce", {"targets": ["star"]})
    before = weights_of(testbed_pipe)
    report = erasekit.evaluate(testbed_pipe, erasure, seeds=1, contexts=2, progress=False)
    assert 0 <= report["ua"] <= 1 and report["base"]["targets"][0]["concept"] == "star"
    assert same(weights_of(testbed_pipe), before)
    with pytest.raises(ConfigError, match="judge"):
        erasekit.evaluate(tiny_pipeline("sd"), concepts=["star"], seeds=1, contexts=1)


@pytest.mark.testbed
def test_erase_stops_early_from_python(testbed_pipe):
    erasure = erasekit.erase(
        testbed_pipe, "esd", "star", iterations=4, eval_every=2, ddim_steps=2, stop_at_ua=0.0, progress=False
    )
    assert erasure.info["training"]["stopped_early"] and erasure.info["training"]["steps_run"] == 2
    with pytest.raises(ConfigError, match="stop_at_ua"):
        erasekit.erase(testbed_pipe, "esd", "star", iterations=2, min_ira=0.5)


@pytest.mark.testbed
def test_dtype_option_loads_half_precision(tmp_path):
    r = runner.invoke(app, ["erase", "-c", "star", "--dtype", "bfloat16", "-o", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    erasure = erasekit.Erasure.load(tmp_path / "e")
    assert {v.dtype for v in erasure.weights.values()} == {torch.bfloat16}
    r = runner.invoke(app, ["erase", "-c", "star", "--dtype", "float8", "-o", str(tmp_path / "f")])
    assert r.exit_code == 2 and "dtype" in r.stderr and not (tmp_path / "f").exists()


def test_registration_is_validated():
    def fn(pipe, request, config, adapter, progress=True, judge=None):
        """A method."""

    class Cfg(MethodConfig):
        pass

    try:
        with pytest.raises(ValueError, match="families"):
            register_method("t-bad-family", Cfg, families=("sd15",), kind="closed-form")(fn)
        with pytest.raises(ValueError, match="kind"):
            register_method("t-bad-kind", Cfg, families=("sd",), kind="magic")(fn)
        with pytest.raises(ValueError, match="judge"):
            register_method("t-undeclared", Cfg, families=("sd",), kind="closed-form")(fn)  # takes judge, declares nothing
        with pytest.raises(ValueError, match="MethodConfig"):
            register_method("t-config", object, families=("sd",), kind="closed-form", accepts=("judge",))(fn)
        register_method("t-ok", Cfg, families=("sd",), kind="closed-form", accepts=("judge",))(fn)
        assert erasekit.get_method("t-ok").accepts == {"judge"}
        with pytest.raises(ValueError, match="twice"):
            register_method("t-ok", Cfg, families=("sd",), kind="closed-form", accepts=("judge",))(fn)
    finally:
        for name in [n for n in METHODS if n.startswith("t-")]:
            del METHODS[name]


@pytest.mark.testbed
def test_the_model_profile_says_what_its_world_offers(testbed_pipe):
    from erasekit.core.request import ErasureRequest
    from erasekit.models.profile import ModelProfile, profile_of

    testbed = profile_of(testbed_pipe)
    assert testbed.name == "testbed" and testbed.has_exact_masks and testbed.sampling.get("steps")
    assert testbed.with_implicit(ErasureRequest.from_dict({"targets": ["watermark"]})).targets[0].prompts
    assert testbed.classifier() is not None
    images, masks = testbed.concept_renders("star", 2, seed=0)
    assert images.shape[0] == masks.shape[0] == 2
    with pytest.raises(ConfigError, match="vocabulary: zebra"):
        testbed.check_vocabulary(ErasureRequest.from_dict({"targets": ["zebra"]}))
    generic = profile_of(tiny_pipeline("sd"))
    assert generic == ModelProfile() and not generic.has_exact_masks and generic.classifier() is None
    generic.check_vocabulary(ErasureRequest.from_dict({"targets": ["zebra"]}))  # an open vocabulary
    request = ErasureRequest.from_dict({"targets": ["watermark"]})
    assert generic.with_implicit(request) is request
    with pytest.raises(ValueError):
        generic.concept_renders("star", 1, 0)
