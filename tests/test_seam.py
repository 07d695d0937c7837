"""The seam between the two kinds of model, as the Python API sees it: one registry axis (methods,
attacks, judges), one profile, one load_model, and each job taking either kind and refusing the
other kind's arguments with one line instead of ignoring them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import erasekit
from erasekit import api, models
from erasekit.cli import app
from erasekit.core.errors import ConfigError
from erasekit.core.registry import JUDGES, all_attacks, all_judges, all_methods, get_judge, register_judge
from erasekit.models import CAUSAL_LM, DIFFUSION, kind_of, load_model, model_kind, model_label
from erasekit.models.profile import profile_of


def test_every_registered_entry_names_its_kinds_on_one_axis():
    from erasekit.core.registry import FAMILIES

    for spec in [*all_methods(), *all_attacks(), *all_judges()]:
        assert spec.kinds and set(spec.kinds) <= set(FAMILIES), spec.name
    assert {j.name for j in all_judges()} >= {"testbed", "fact-answer"}
    assert [j.name for j in all_judges("causal-lm")] == ["fact-answer"]


def test_register_judge_refuses_bad_entries_and_get_judge_the_wrong_kind():
    def factory(model=None):
        """A judge for the test."""

    try:
        with pytest.raises(ValueError, match="kinds"):
            register_judge("t-judge", kinds=("dalle",), judges="images")(factory)
        with pytest.raises(ValueError, match="images' or 'answers"):
            register_judge("t-judge", kinds=("sd",), judges="sounds")(factory)
        register_judge("t-judge", kinds=("sd",), judges="images")(factory)
        assert get_judge("t-judge").summary == "A judge for the test."
        with pytest.raises(ValueError, match="twice"):
            register_judge("t-judge", kinds=("sd",), judges="images")(factory)
        with pytest.raises(ConfigError, match="judges sd models, not causal-lm"):
            get_judge("t-judge", "causal-lm")
        with pytest.raises(ConfigError, match="unknown judge"):
            get_judge("no-such-judge")
    finally:
        JUDGES.pop("t-judge", None)


def test_the_fact_answer_judge_reads_answers():
    judge = get_judge("fact-answer", "causal-lm").factory()
    assert judge.reveals(["She was born in Aldmoor.", "I don't know."], ["Aldmoor", "Aldmoor"]).tolist() == [True, False]
    with pytest.raises(ValueError):
        judge.reveals(["one"], [])


def test_one_profile_for_both_kinds(lm_dir):
    lm = load_model(lm_dir)
    assert kind_of(lm) == CAUSAL_LM and model_kind(lm_dir) == CAUSAL_LM and model_kind("testbed") == DIFFUSION
    profile = profile_of(lm)
    assert profile.kind == "causal-lm" and profile.world == "fact-world" and profile.judge == "fact-answer"
    assert profile.world_params["n_authors"] == 20
    generic = profile_of(erasekit.testing.tiny_lm("gpt2"))
    assert generic.world is None and generic.judge is None and generic.recommended == {}


def test_results_name_shipped_models_by_name_never_by_this_machines_path(tmp_path, monkeypatch):
    assert model_label(models.testbed_dir("llm")) == "testbed-llm"
    assert model_label(str(models.testbed_dir())) == "testbed"
    assert model_label("testbed") == "testbed"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    assert model_label(tmp_path / "m") == "m"


def test_each_job_refuses_the_other_kinds_arguments(lm_dir, tmp_path):
    with pytest.raises(ConfigError, match="request= applies to image pipelines only"):
        api.erasing.erase_to(tmp_path / "e", lm_dir, "ga", request={"targets": ["star"]}, forget="forget10")
    with pytest.raises(ConfigError, match="forget= applies to language models only"):
        api.erasing.erase_to(tmp_path / "e", "testbed", "uce", request={"targets": ["star"]}, forget="forget01")
    with pytest.raises(ConfigError, match="seeds= applies to image pipelines only"):
        api.evaluate(lm_dir, None, seeds=3)
    with pytest.raises(ConfigError, match="split= applies to language models only"):
        api.evaluate("testbed", None, concepts=["star"], split="forget01")
    with pytest.raises(ConfigError, match="prompts= applies to image pipelines only"):
        api.attacking.attack(lm_dir, None, "paraphrase", prompts=["a star"])
    with pytest.raises(ConfigError, match="seeds= applies to image pipelines only"):
        api.bench(model=str(lm_dir), seeds=2)
    with pytest.raises(ConfigError, match="classifier= applies to image pipelines only"):
        api.check_testbed(tmp_path / "g.json", model=str(lm_dir), classifier="judge.safetensors")
    with pytest.raises(ConfigError, match="judge= applies to image pipelines only"):
        api.erase(load_model(lm_dir), "ga", "forget10", judge=object())


def test_one_erase_job_takes_either_kind(lm_dir, tmp_path):
    """``erase_to`` on a language model unlearns (default method npo) and checkpoints like a pipeline's run."""
    erasure = api.erasing.erase_to(tmp_path / "e", lm_dir, forget="forget10", progress=False, epochs=1, lr=1e-3)
    assert erasure.method == "npo" and erasure.family == "causal-lm" and (tmp_path / "e" / "erasure.json").is_file()
    assert not (tmp_path / "e.checkpoints").exists()  # the default checkpoints go once the erasure is saved


def test_the_judges_command_lists_both_kinds():
    result = CliRunner().invoke(app, ["judges"])
    assert result.exit_code == 0, result.output
    assert "testbed" in result.output and "fact-answer" in result.output and "causal-lm" in result.output
