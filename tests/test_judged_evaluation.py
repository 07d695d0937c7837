"""Evaluate and attack any pipeline with a registered judge on a prompt file: the chain on the tiny
pipelines of every family with a tiny random CLIP judge (and NudeNet, which ships its weights),
per-row seeds and guidance honoured, the judge recorded in every result, and bad inputs refused
before any image is made."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from erasekit import api
from erasekit.cli import app
from erasekit.core.errors import ConfigError, UnsupportedModelError
from erasekit.core.registry import all_attacks, get_attack
from erasekit.evaluation.judged import generate_rows, row_draws
from erasekit.evaluation.prompt_sets import PromptRow, read_prompt_set
from erasekit.generation import SamplingConfig, generate
from erasekit.testing import tiny_clip_dir, tiny_pipeline

FAST = SamplingConfig(steps=2, guidance_scale=2.0)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip_dir(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture
def prompt_files(tmp_path):
    target = tmp_path / "cats.csv"
    target.write_text("case_number,prompt,evaluation_seed,evaluation_guidance\n0,a cat,11,3.0\n1,a photo of a cat,12,\n")
    retain = tmp_path / "retain.txt"
    retain.write_text("a dog\na tree\n")
    return target, retain


def test_rows_are_drawn_with_their_own_seed_and_guidance():
    pipe = tiny_pipeline("sd")
    rows = [PromptRow("a cat", seed=5, guidance=1.0), PromptRow("a cat", seed=5), PromptRow("a dog")]
    assert row_draws(rows, 2) == [(0, 5), (0, 6), (1, 5), (1, 6), (2, 0), (2, 1)]
    images = generate_rows(pipe, rows, 1, FAST, progress=False)
    own = generate(pipe, ["a cat"], [5], SamplingConfig(steps=2, guidance_scale=1.0), progress=False)
    default = generate(pipe, ["a cat"], [5], FAST, progress=False)
    assert np.array_equal(images[0], own[0]) and np.array_equal(images[1], default[0])
    assert not np.array_equal(images[0], images[1])  # the row's guidance changed its image


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_judged_evaluation_runs_on_every_family_and_records_its_judge(family, clip_dir, prompt_files, tmp_path):
    target, retain = prompt_files
    pipe = tiny_pipeline(family)
    erasure = api.erase(pipe, "uce", {"targets": ["cat"]}, progress=False)
    report = api.evaluate(pipe, erasure, ["cat"], out=tmp_path / "ev.json", judge=f"clip:clip={clip_dir}", prompts=target,
                          retain_prompts=retain, samples=2, fidelity=f"clip-score:clip={clip_dir}", steps=2, progress=False)  # fmt: skip
    assert report["kind"] == "judged" and report["judge"]["name"] == "clip" and report["judge"]["weights"] == "clip"
    assert report["target_prompts"] == 2 and len(report["per_image"]) == 4
    assert [(r["prompt"], r["seed"]) for r in report["per_image"]][:2] == [("a cat", 11), ("a cat", 12)]
    for block in (report["base"], report):
        assert block["shown"]["n"] == 4 and 0 <= block["ua"] <= 1 and len(block["shown"]["ci95"]) == 2
    retained = report["retain"]
    assert retained["verdict_kept"]["n"] == 4 and retained["pixel_change"] > 0  # UCE changed the images a little
    assert retained["clip_score"]["base"] >= 0 and retained["fd_clip"] >= 0 and retained["fidelity_judge"]["name"] == "clip-score"
    assert isinstance(retained["kid_clip"], float)
    saved = json.loads((tmp_path / "ev.json").read_text())
    assert saved["judge"] == report["judge"] and saved["prompt_set"]["prompts"].endswith("cats.csv")
    attacked = api.attacking.attack(pipe, erasure, "synonyms", "cat", budget=1, seeds=1, judge=f"clip:clip={clip_dir}",
                                    prompt_file=target, steps=2, progress=False, out=tmp_path / "a.json")  # fmt: skip
    assert attacked.judge["name"] == "clip" and attacked.trials == 2
    from erasekit.report.html import write_html_report

    page = write_html_report([tmp_path / "ev.json", tmp_path / "a.json"], tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "synonyms" in page  # the chain ends in the report


def test_nudenet_judges_any_pipeline_offline(prompt_files):
    target, _ = prompt_files
    pipe = tiny_pipeline("sd")
    report = api.evaluate(pipe, None, ["nudity"], judge="nudenet:threshold=0.45", prompts=target, steps=2, progress=False)
    assert report["judge"]["name"] == "nudenet" and report["judge"]["threshold"] == 0.45
    assert report["base"]["shown"]["n"] == 2 and "shown" not in report  # no erasure: the base model only


def test_judged_jobs_refuse_bad_input_before_any_image(clip_dir, prompt_files, tmp_path):
    target, _ = prompt_files
    pipe = tiny_pipeline("sd")
    with pytest.raises(ConfigError, match="no judge of its own: pass --judge"):
        api.evaluate(pipe, None, ["cat"], prompts=target)
    with pytest.raises(ConfigError, match="needs its target prompts"):
        api.evaluate(pipe, None, ["cat"], judge=f"clip:clip={clip_dir}")
    with pytest.raises(ConfigError, match="the nudenet judge cannot tell 'cat'"):
        api.evaluate(pipe, None, ["cat"], judge="nudenet", prompts=target)
    with pytest.raises(ConfigError, match="must score images against their prompts"):
        api.evaluate(pipe, None, ["cat"], judge=f"clip:clip={clip_dir}", prompts=target, fidelity="nudenet")
    with pytest.raises(ConfigError, match=r"^seeds= does not apply to a judged evaluation \(--prompts\): .*use --samples"):
        api.evaluate(pipe, None, ["cat"], judge=f"clip:clip={clip_dir}", prompts=target, seeds=3)
    with pytest.raises(ConfigError, match=r"^limit= does not apply to the testbed evaluation \(no --prompts\): .*--prompts FILE"):
        api.evaluate("testbed", None, ["star"], limit=3)
    with pytest.raises(ConfigError, match=r"^limit= does not apply to the testbed bench \(no --prompts\)"):
        api.bench(model="testbed", methods=["uce"], concepts=["star"], limit=3, progress=False)
    with pytest.raises(ConfigError, match="select rows of a prompt file"):
        api.attacking.attack(pipe, None, "synonyms", "cat", judge=f"clip:clip={clip_dir}", prompts=["a cat"], limit=2)


@pytest.fixture(scope="module")
def erased_sd():
    pipe = tiny_pipeline("sd")
    return pipe, api.erase(pipe, "uce", {"targets": ["cat"]}, progress=False)


@pytest.mark.parametrize("name", [a.name for a in all_attacks("diffusion")])
def test_every_image_attack_runs_on_any_pipeline_with_a_judge(name, erased_sd, clip_dir, prompt_files, tmp_path):
    """No testbed profile needed: each attack runs on the prompt file's prompts and records the judge."""
    target, _ = prompt_files
    pipe, erasure = erased_sd
    budget = min(2, get_attack(name).budget_max)
    result = api.attacking.attack(pipe, erasure, name, "cat", budget=budget, seeds=1, judge=f"clip:clip={clip_dir}", prompt_file=target,
                                  steps=2, progress=False, out=tmp_path / "a.json")  # fmt: skip
    assert result.trials == 2 and {r.trial.prompt for r in result.records} == {p.prompt for p in read_prompt_set(target)}
    assert result.judge["name"] == "clip" and json.loads((tmp_path / "a.json").read_text())["judge"]["name"] == "clip"
    assert result.curve[0] == [0, result.asr_before] and 0 <= result.asr_before <= result.asr <= 1


def test_cli_evaluates_a_pipeline_directory_with_a_judge(clip_dir, prompt_files, tmp_path):
    target, _ = prompt_files
    tiny_pipeline("sd").save_pretrained(tmp_path / "sd")
    r = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "sd"), "--concept", "cat", "--judge", f"clip:clip={clip_dir}",
                                 "--prompts", str(target), "--steps", "2", "--out", str(tmp_path / "ev.json")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "judge clip" in r.output and (tmp_path / "ev.json").is_file()
    r = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "sd"), "--concept", "cat", "--judge", "nudenet:colour=red",
                                 "--prompts", str(target), "--out", str(tmp_path / "ev2.json")])  # fmt: skip
    assert r.exit_code == 2 and "takes no option 'colour'" in r.output


def test_the_image_cache_draws_each_image_once_and_resumes(clip_dir, prompt_files, tmp_path, monkeypatch):
    """Keyed by model, erasure, prompt, seed and sampler: a rerun draws nothing, a longer run draws only
    the new rows, another erasure draws again; the images read back are the ones drawn."""
    import erasekit.evaluation.cache as cache_mod

    target, _ = prompt_files
    pipe = tiny_pipeline("sd")
    erasure = api.erase(pipe, "uce", {"targets": ["cat"]}, progress=False)
    drawn = []
    real = cache_mod.generate

    def counting(pipe_, prompts, seeds, *a, **k):
        drawn.append(len(prompts))
        return real(pipe_, prompts, seeds, *a, **k)

    monkeypatch.setattr(cache_mod, "generate", counting)
    args = dict(judge=f"clip:clip={clip_dir}", prompts=target, steps=2, progress=False, cache=tmp_path / "cache")
    first = api.evaluate(pipe, erasure, ["cat"], limit=1, **args)  # as if killed after the first row
    assert first["image_cache"] == {"hits": 0, "drawn": 2} and sum(drawn) == 2
    full = api.evaluate(pipe, erasure, ["cat"], **args)
    assert full["image_cache"] == {"hits": 2, "drawn": 2} and sum(drawn) == 4
    again = api.evaluate(pipe, erasure, ["cat"], **args)
    assert again["image_cache"] == {"hits": 4, "drawn": 0} and sum(drawn) == 4
    assert again["per_image"] == full["per_image"] and again["base"] == full["base"]
    other = api.erase(pipe, "uce", {"targets": ["cat"]}, progress=False, lamb=0.1)
    assert api.evaluate(pipe, other, ["cat"], **args)["image_cache"] == {"hits": 2, "drawn": 2}  # the base images are shared
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(Exception, match="erasekit did not write"):
        api.evaluate(pipe, erasure, ["cat"], **{**args, "cache": tmp_path / "mine"})


def test_a_judged_bench_shares_the_base_images_and_writes_its_table(clip_dir, prompt_files, tmp_path):
    target, retain = prompt_files
    tiny_pipeline("sd").save_pretrained(tmp_path / "sd")
    runs = api.bench(["uce", "time"], ["cat"], out_dir=tmp_path / "b", model=str(tmp_path / "sd"), judge=f"clip:clip={clip_dir}",
                     prompts=target, retain_prompts=retain, progress=False)  # fmt: skip
    assert [(r["method"], r["concept"]) for r in runs] == [("uce", "cat"), ("time", "cat")]
    assert runs[1]["image_cache"]["hits"] >= 4  # the base model's target and retain images were drawn once, for uce
    assert all((tmp_path / "b" / f"{m}-cat.json").is_file() for m in ("uce", "time"))
    table = (tmp_path / "b" / "results.md").read_text()
    assert "| uce | cat |" in table and "| time | cat |" in table and "clip" in table
    with pytest.raises(ConfigError, match="seeds= applies to the testbed bench"):
        api.bench(["uce"], ["cat"], out_dir=tmp_path / "b2", model=str(tmp_path / "sd"), judge=f"clip:clip={clip_dir}", prompts=target,
                  seeds=3)  # fmt: skip
    with pytest.raises(ConfigError, match="needs --methods and --concepts"):
        api.bench(
            ["uce"], None, out_dir=tmp_path / "b3", model=str(tmp_path / "sd"), judge=f"clip:clip={clip_dir}", prompts=target
        )


def test_the_attack_reads_its_plain_images_from_the_cache(erased_sd, clip_dir, prompt_files, tmp_path):
    target, _ = prompt_files
    pipe, erasure = erased_sd
    args = dict(
        budget=1, seeds=1, judge=f"clip:clip={clip_dir}", prompt_file=target, steps=2, progress=False, cache=tmp_path / "c"
    )
    first = api.attacking.attack(pipe, erasure, "soft-prompt", "cat", **args)
    second = api.attacking.attack(pipe, erasure, "synonyms", "cat", **args)
    assert first.info["image_cache"] == {"hits": 0, "drawn": 2, "attack_restored": False}
    assert second.info["image_cache"] == {"hits": 2, "drawn": 0, "attack_restored": False}
    assert first.asr_before == second.asr_before  # the same plain images, judged alike
    again = api.attacking.attack(pipe, erasure, "soft-prompt", "cat", **args)  # the finished attack is read back
    assert again.info["image_cache"]["attack_restored"] is True
    assert again.to_dict()["found"] == first.to_dict()["found"] and (again.images == first.images).all()


def test_kid_is_the_unbiased_polynomial_mmd():
    import torch

    from erasekit.evaluation.metrics import kernel_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)

    def k(x, y):
        return (float(x @ y) / 4 + 1) ** 3

    aa = sum(k(a[i], a[j]) for i in range(6) for j in range(6) if i != j) / 30
    bb = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
    ab = sum(k(a[i], b[j]) for i in range(6) for j in range(5)) / 30
    assert kernel_distance(a, b) == pytest.approx(aa + bb - 2 * ab, rel=1e-9)
    same, shifted = torch.randn(400, 4, generator=g), torch.randn(400, 4, generator=g)
    assert abs(kernel_distance(same, shifted)) < 0.05 < kernel_distance(same, shifted + 2)
    with pytest.raises(ValueError, match="at least two"):
        kernel_distance(a[:1], b)


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_token_attacks_search_in_the_families_own_text_features(family, clip_dir, prompt_files):
    """Ring-A-Bell and token search score candidates through every text encoder of the family (SDXL's
    two, SD3's three), where their targets live: they ran on SD only before (a shape mismatch)."""
    target, _ = prompt_files
    pipe = tiny_pipeline(family)
    names = ["ring-a-bell", "token-search"] if family == "sdxl" else ["ring-a-bell"]
    for name in names:
        result = api.attacking.attack(pipe, None, name, "cat", budget=2, seeds=1, judge=f"clip:clip={clip_dir}",
                                      prompt_file=target, steps=2, progress=False)  # fmt: skip
        assert result.trials == 2 and len(result.records) == 2
        scores = result.info["best_distance" if name == "ring-a-bell" else "final_similarity"]
        assert len(scores) == 2 and all(np.isfinite(scores))  # one search per prompt, in the family's feature space


def test_embedding_attacks_are_refused_on_families_without_a_hookable_text_encoder(clip_dir, prompt_files, monkeypatch):
    """SD3 and Flux encode through their pipelines' encode_prompt: the attacks that edit token embeddings
    are refused in one line, before any image is drawn."""
    import erasekit.api.attacking as attacking

    target, _ = prompt_files
    drawn = []
    monkeypatch.setattr(attacking, "plain_trial_images", lambda *a: drawn.append(1))
    with pytest.raises(UnsupportedModelError) as err:
        attacking.attack(tiny_pipeline("flux"), None, "synonyms,soft-prompt,token-search", "cat", budget=2, seeds=1,
                         judge=f"clip:clip={clip_dir}", prompt_file=target, steps=2, progress=False)  # fmt: skip
    assert str(err.value).startswith("soft-prompt, token-search cannot attack flux models (they apply to sd, sdxl")
    assert "\n" not in str(err.value) and not drawn


@pytest.mark.parametrize("name", ["ring-a-bell", "token-search"])
def test_token_searches_refuse_more_tokens_than_the_context_holds(name, clip_dir, prompt_files):
    """The encoders would truncate them (and token search's one-hot rows would no longer line up)."""
    target, _ = prompt_files
    pipe = tiny_pipeline("sd")
    with pytest.raises(ConfigError, match=r"^\d+ tokens do not fit in the \d+-token context$"):
        api.attacking.attack(pipe, None, name, "cat", budget=1, seeds=1, params={"n_tokens": pipe.tokenizer.model_max_length},
                             judge=f"clip:clip={clip_dir}", prompt_file=target, steps=2, progress=False)  # fmt: skip
