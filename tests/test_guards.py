"""Guards: sampling-time erasures (negative prompt, SLD), applied through erasekit's samplers.

The defining properties: SLD equals diffusers' ``StableDiffusionPipelineSafe`` image for image, the
negative-prompt guard equals ``pipe(negative_prompt=...)``, a guard-free run of erasekit's guarded
sampler equals ``pipe(...)``, and a guard saves, loads, stacks on a weight erasure and comes off.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import erasekit
from erasekit.core.erasure import Erasure
from erasekit.core.errors import ConfigError, InvalidInputError
from erasekit.core.guards import Guard, Stack, guards_of
from erasekit.generation import SamplingConfig, generate, sample_guarded
from erasekit.testing import tiny_pipeline

PROMPTS = ["a red star", "a blue circle on a white background"]
SEEDS = [3, 11]


def _pipe(family: str = "sd"):
    return tiny_pipeline(family)


def _safe_pipeline(pipe):
    from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

    return StableDiffusionPipelineSafe(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                                       scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)  # fmt: skip


def _plain(pipe, steps: int, guidance: float, **kw) -> np.ndarray:
    gens = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    return np.asarray(pipe(prompt=PROMPTS, generator=gens, num_inference_steps=steps, guidance_scale=guidance,
                           output_type="np", **kw).images)  # fmt: skip


@pytest.mark.testbed
@pytest.mark.parametrize("preset", ["weak", "medium", "strong", "max"])
def test_sld_equals_diffusers_safe_pipeline(preset, testbed_pipe):
    """On the testbed (a trained model, where the safety concept's prediction differs from the prompt's)."""
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig

    pipe = testbed_pipe
    steps, guidance = 20, 7.5
    theirs = _safe_pipeline(pipe)
    theirs.safety_concept = "star"
    gens = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    reference = np.asarray(theirs(prompt=PROMPTS, generator=gens, num_inference_steps=steps, guidance_scale=guidance,
                                  output_type="np", **getattr(SafetyConfig, preset.upper())).images)  # fmt: skip
    erasure = erasekit.erase(pipe, "sld", {"targets": ["star"]}, progress=False, config=preset)
    with erasure.applied(pipe):
        ours = sample_guarded(pipe, PROMPTS, SEEDS, SamplingConfig(steps=steps, guidance_scale=guidance).resolved(pipe))
    assert np.abs(ours - reference).max() <= 1e-5
    plain = _plain(pipe, steps, guidance)
    assert np.abs(plain - reference).max() > 1e-4, "SLD changed nothing here: the comparison would not catch an error"


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_the_guarded_sampler_equals_the_pipeline_without_guards(family):
    pipe = _pipe(family)
    sampling = SamplingConfig(steps=8, guidance_scale=4.0).resolved(pipe)
    ours = sample_guarded(pipe, PROMPTS, SEEDS, sampling)
    assert np.abs(ours - _plain(pipe, 8, 4.0)).max() <= 1e-5


@pytest.mark.parametrize("scheduler", ["PNDMScheduler", "DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler"])
def test_the_guarded_sampler_follows_the_pipelines_own_scheduler(scheduler):
    """SD 1.x ships PNDM (which sets steps + 1 timesteps), others DPM-Solver or a stochastic sampler."""
    import diffusers

    pipe = _pipe()
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    sampling = SamplingConfig(steps=8, guidance_scale=4.0).resolved(pipe)
    ours = sample_guarded(pipe, PROMPTS, SEEDS, sampling)
    assert np.abs(ours - _plain(pipe, 8, 4.0)).max() <= 1e-5


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_negative_prompt_guard_equals_the_pipelines_negative_prompt(family):
    pipe = _pipe(family)
    erasure = erasekit.erase(pipe, "negative-prompt", {"targets": ["star"]}, progress=False)
    with erasure.applied(pipe):
        assert [g.negative() for g in guards_of(pipe)] == ["star"]
        ours = generate(pipe, PROMPTS, SEEDS, SamplingConfig(steps=8, guidance_scale=4.0), progress=False)
    assert not guards_of(pipe)
    theirs = generate(pipe, PROMPTS, SEEDS, SamplingConfig(steps=8, guidance_scale=4.0, negative_prompt="star"), progress=False)
    assert np.array_equal(ours, theirs)
    plain = generate(pipe, PROMPTS, SEEDS, SamplingConfig(steps=8, guidance_scale=4.0), progress=False)
    assert not np.array_equal(ours, plain)


def test_a_guard_saves_loads_and_stacks_on_a_weight_erasure(tmp_path):
    pipe = _pipe()
    uce = erasekit.erase(pipe, "uce", {"targets": ["star"]}, progress=False)
    sld = erasekit.erase(pipe, "sld", {"targets": ["star"]}, progress=False, config="strong", warmup_steps=2)
    assert sld.weights == {} and sld.metadata()["attachment"]["config"]["warmup_steps"] == 2
    assert sld.metadata()["attachment"]["config"]["safety_scale"] == 2000  # the preset's, where not overridden
    sld.save(tmp_path / "g")
    loaded = Erasure.load(tmp_path / "g")
    assert loaded.attachment.config() == sld.attachment.config()

    stacked = uce.with_guard(loaded)
    assert stacked.method == "uce+sld" and stacked.attachment.kind == "sld"
    assert stacked.touched() == uce.touched()
    stacked.save(tmp_path / "s")
    again = Erasure.load(tmp_path / "s")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    sampling = SamplingConfig(steps=6, guidance_scale=5.0)
    with again.applied(pipe):
        assert [g.kind for g in guards_of(pipe)] == ["sld"]
        both = generate(pipe, PROMPTS, SEEDS, sampling, progress=False)
    assert not guards_of(pipe)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    with uce.applied(pipe):
        only_uce = generate(pipe, PROMPTS, SEEDS, sampling, progress=False)
        with loaded.applied(pipe):
            assert np.array_equal(generate(pipe, PROMPTS, SEEDS, sampling, progress=False), both)
    assert not np.array_equal(both, only_uce)

    # image caches key an erasure by its identity: tensors and attachment configuration
    other = erasekit.erase(pipe, "sld", {"targets": ["star"]}, progress=False, config="max")
    assert sld.checksum() == other.checksum() and sld.identity() != other.identity()
    assert stacked.identity() != uce.identity() and loaded.identity() == sld.identity()

    negative = erasekit.erase(pipe, "negative-prompt", {"targets": ["circle"]}, progress=False)
    two = stacked.with_guard(negative)
    assert isinstance(two.attachment, Stack) and two.method == "uce+sld+negative-prompt"
    two.save(tmp_path / "two")
    with Erasure.load(tmp_path / "two").applied(pipe):
        assert [g.kind for g in guards_of(pipe)] == ["sld", "negative-prompt"]
    assert not guards_of(pipe)


def test_guard_refusals():
    pipe = _pipe()
    with pytest.raises(ConfigError, match="config must be one of"):
        erasekit.erase(pipe, "sld", {"targets": ["star"]}, progress=False, config="extreme")
    with pytest.raises(ConfigError, match="safety_scale must be > 1"):
        erasekit.erase(pipe, "sld", {"targets": ["star"]}, progress=False, safety_scale=1.0)
    guard = erasekit.erase(pipe, "negative-prompt", {"targets": ["star"]}, progress=False)
    with guard.applied(pipe), pytest.raises(InvalidInputError, match="pass no negative prompt"):
        generate(pipe, PROMPTS, SEEDS, SamplingConfig(steps=2, negative_prompt="circle"), progress=False)
    uce = erasekit.erase(pipe, "uce", {"targets": ["star"]}, progress=False)
    with pytest.raises(ConfigError, match="is not a guard"):
        guard.with_guard(uce)
    with pytest.raises(Exception, match="flux"):
        erasekit.erase(tiny_pipeline("flux"), "sld", {"targets": ["star"]}, progress=False)


def test_a_guard_without_effect_keeps_the_pipelines_images():
    """Guard's defaults change nothing: the guarded path (erasekit's sampler) is the pipeline's."""
    pipe = _pipe()

    class Idle(Guard):
        kind = "idle-test"

        def config(self):
            return {}

        @classmethod
        def restore(cls, config, tensors):
            return cls()

    plain = generate(pipe, PROMPTS, SEEDS, SamplingConfig(steps=6, guidance_scale=4.0), progress=False)
    handles = Idle().install(pipe)
    guarded = generate(pipe, PROMPTS, SEEDS, SamplingConfig(steps=6, guidance_scale=4.0), progress=False)
    for h in handles:
        h.remove()
    assert np.array_equal(plain, guarded)


@pytest.mark.testbed
def test_guards_run_through_bench_evaluate_and_attack_on_the_testbed(testbed_pipe, tmp_path):
    from erasekit.api.attacking import attack

    runs = erasekit.bench(["sld", "uce+sld"], ["star"], out_dir=tmp_path / "b", report=tmp_path / "r.md", seeds=1, contexts=2,
                          params={"sld": {"config": "max"}}, progress=False)  # fmt: skip
    assert [r["method"] for r in runs] == ["sld", "uce+sld"]
    assert all(r["ua"] > r["base"]["ua"] for r in runs), "SLD (max) on the testbed erases nothing"
    assert "uce+sld" in (tmp_path / "r.md").read_text()

    guard = erasekit.erase(testbed_pipe, "sld", {"targets": ["star"]}, progress=False, config="max")
    guard.save(tmp_path / "g")
    report = erasekit.evaluate("testbed", None, ["star"], seeds=1, contexts=2, progress=False, guard=tmp_path / "g",
                               out=tmp_path / "ev.json")  # fmt: skip
    assert report["erasure"] == f"guard {tmp_path / 'g'}"
    assert json.loads((tmp_path / "ev.json").read_text())["erasure"] == report["erasure"]
    found = attack("testbed", None, "synonyms", "star", budget=2, seeds=1, guard=tmp_path / "g", progress=False)
    assert found.erasure == f"guard {tmp_path / 'g'}" and found.asr_before < 1.0
    with pytest.raises(ConfigError, match="only guards stack"):
        erasekit.bench(["sld+uce"], ["star"], out_dir=tmp_path / "b2", report=None, progress=False)


# -- LEACE on the prompt embeddings -----------------------------------------------------------------
def _labelled_states(seed: int = 0, n: int = 400, d: int = 12, k: int = 2):
    gen = torch.Generator().manual_seed(seed)
    z = torch.zeros(n, k)
    cls = torch.randint(0, k + 1, (n,), generator=gen)  # class k = neutral (all zeros)
    for j in range(k):
        z[cls == j, j] = 1.0
    mix = torch.randn(d, d, generator=gen, dtype=torch.float64)
    x = (
        torch.randn(n, d, generator=gen, dtype=torch.float64) @ mix
        + z.double() @ torch.randn(k, d, generator=gen, dtype=torch.float64) * 2
    )
    return x, z


@pytest.mark.parametrize("shrinkage", [True, False])
def test_leace_fit_equals_the_concept_erasure_package(shrinkage):
    from concept_erasure import LeaceFitter

    from erasekit.methods.diffusion.leace_prompt import fit_leace

    x, z = _labelled_states()
    fitter = LeaceFitter(x.shape[1], z.shape[1], dtype=torch.float64, shrinkage=shrinkage)  # its defaults otherwise
    fitter.update(x, z)
    ref = fitter.eraser
    ours = fit_leace(x, z, shrinkage=shrinkage)
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    assert torch.allclose(eye - ours["left"] @ ours["right"], ref.P, atol=1e-5)
    assert torch.allclose(ours["bias"], ref.bias, atol=1e-5)
    erased = x - ((x - ours["bias"]) @ ours["right"].T) @ ours["left"].T
    assert torch.allclose(erased, ref(x), atol=1e-5)
    # the guarantee: every class has the same mean afterwards (no linear classifier beats a constant)
    means = [erased[z[:, j] == 1].mean(0) for j in range(z.shape[1])] + [erased[z.sum(1) == 0].mean(0)]
    assert all(torch.allclose(m, means[-1], atol=1e-6) for m in means)
    assert not torch.allclose(x[z[:, 0] == 1].mean(0), x[z.sum(1) == 0].mean(0), atol=0.1)


def test_leace_prompt_guard_hides_the_concept_from_what_the_unet_reads(tmp_path):
    from erasekit.core.request import ErasureRequest
    from erasekit.methods.diffusion.leace_prompt import fit_prompts
    from erasekit.models.diffusion import get_adapter
    from erasekit.models.profile import profile_of

    pipe = _pipe()
    adapter = get_adapter(pipe)
    erasure = erasekit.erase(pipe, "leace-prompt", {"targets": ["star"]}, progress=False)
    assert erasure.weights == {} and erasure.info["rank"] == 1
    erasure.save(tmp_path / "l")
    loaded = Erasure.load(tmp_path / "l")
    request = ErasureRequest(["star"])
    prompts, z = fit_prompts(request, profile_of(pipe).retain_prompts(avoid=("star",)))
    with torch.no_grad():
        before = adapter.conditioning(pipe, prompts).tokens
        with loaded.applied(pipe):
            after = adapter.conditioning(pipe, prompts).tokens
            images = generate(pipe, PROMPTS, SEEDS, SamplingConfig(steps=4, guidance_scale=4.0), progress=False)
        again = adapter.conditioning(pipe, prompts).tokens
    assert torch.equal(before, again)  # removed with the erasure
    target = z[:, 0] == 1

    def gap(states):  # distance between the mean token state of the target prompts and of the neutral ones
        flat = states.double()
        return (flat[target].mean((0, 1)) - flat[~target].mean((0, 1))).norm()

    assert gap(before) > 1e-3 and gap(after) < 1e-4 * gap(before)  # what the UNet reads: class means now equal
    assert not np.array_equal(images, generate(pipe, PROMPTS, SEEDS, SamplingConfig(steps=4, guidance_scale=4.0), progress=False))
    with pytest.raises(Exception, match="sdxl"):
        erasekit.erase(tiny_pipeline("sdxl"), "leace-prompt", {"targets": ["star"]}, progress=False)


@pytest.mark.testbed
def test_safety_filter_blacks_out_what_its_judge_flags_and_nothing_else(testbed_pipe, judge, tmp_path):
    from erasekit.judges.testbed import TestbedJudge

    prompts = ["a red star on a black background", "a blue circle on a white background"] * 2
    seeds = [0, 1, 2, 3]
    sampling = SamplingConfig(steps=20)
    plain = generate(testbed_pipe, prompts, seeds, sampling, progress=False)
    shows = TestbedJudge(judge).shows(plain, "star")
    assert shows.tolist() == [True, False, True, False]
    erasure = erasekit.erase(testbed_pipe, "safety-filter", {"targets": ["star"]}, progress=False)
    erasure.save(tmp_path / "f")
    with Erasure.load(tmp_path / "f").applied(testbed_pipe):
        filtered = generate(testbed_pipe, prompts, seeds, sampling, progress=False)
    assert (filtered[shows] == 0).all() and np.array_equal(filtered[~shows], plain[~shows])
    with pytest.raises(ConfigError, match="judge"):
        erasekit.erase(_pipe(), "safety-filter", {"targets": ["star"]}, progress=False)  # a model without a judge


def test_a_language_model_guard_stacks_on_an_unlearning(lm_dir, tmp_path):
    """--guard is one mechanism for both kinds: the refusal guard stacked on a gradient-ascent run."""
    from erasekit.api.attacking import attack

    lm = erasekit.load_lm(lm_dir)
    ga = erasekit.unlearn(lm, "ga", "forget10", progress=False, epochs=1)
    guard = erasekit.unlearn(lm, "refusal-guard", "forget10", progress=False)
    ga.save(tmp_path / "ga")
    guard.save(tmp_path / "guard")
    stacked = attack(lm_dir, tmp_path / "ga", "paraphrase", budget=0, guard=tmp_path / "guard", progress=False)
    assert stacked.asr_before == 0.0  # the refusal guard answers no plain question about a forgotten author
    assert "ga" in stacked.erasure and "refusal-guard" in stacked.erasure
    with pytest.raises(ConfigError, match="not a guard"):
        attack(lm_dir, tmp_path / "guard", "paraphrase", budget=0, guard=tmp_path / "ga", progress=False)


# -- SAFREE ------------------------------------------------------------------------------------------
def test_safree_pieces_follow_the_released_formulas():
    from erasekit.methods.diffusion.safree import projector, step_budget

    a = torch.randn(16, 3, dtype=torch.float64)
    p = projector(a)
    assert torch.allclose(p @ p, p, atol=1e-10) and torch.allclose(p, p.T, atol=1e-10) and torch.allclose(p @ a, a, atol=1e-10)
    # t' = round(up_t * sigmoid(2k (10 beta - tau))): nudity k = 2.5, tau = 5.333; artist k = 3.5, tau = 5.5
    assert step_budget(torch.tensor(0.0), 10, "nudity") == 0 and step_budget(torch.tensor(1.0), 10, "nudity") == 10
    assert step_budget(torch.tensor(0.5333), 10, "nudity") == 5 and step_budget(torch.tensor(0.55), 10, "artist") == 5


def test_safree_projects_the_trigger_tokens_of_what_the_text_encoder_encodes(tmp_path):
    from erasekit.methods.diffusion.safree import projector
    from erasekit.models.diffusion import get_adapter

    pipe = _pipe()
    erasure = erasekit.erase(pipe, "safree", {"targets": ["star"]}, progress=False, svf=False)
    erasure.save(tmp_path / "s")
    guard = Erasure.load(tmp_path / "s").attachment
    tok, enc = pipe.tokenizer, pipe.text_encoder
    ids = tok(["a red star"], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        x = enc(ids).last_hidden_state[0].double()
        n = 3  # a, red, star
        masked = ids.repeat(n, 1)
        masked[torch.arange(n), torch.arange(1, n + 1)] = 0
        pooled = enc(masked).pooler_output.double()
        keyword = enc(
            tok(["star"], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        ).pooler_output
    p_c = projector(keyword.double().T)
    eye = torch.eye(p_c.shape[0], dtype=torch.float64)
    dist = ((eye - p_c) @ pooled.T).norm(dim=0)
    trigger = [i for i in range(n) if dist[i] >= 1.01 * (dist.sum() - dist[i]) / (n - 1)]
    expected = x.clone()
    for i in trigger:
        expected[1 + i] = (eye - p_c) @ projector(pooled.T) @ x[1 + i]
    adapter = get_adapter(pipe)
    guard.install(pipe)
    try:
        with torch.no_grad():
            cond = adapter.conditioning(pipe, ["a red star"])
        used, _ = guard.condition(None, 0, cond)
        assert torch.allclose(cond.tokens[0].double(), x, atol=1e-6)  # the hook hands the original states on
        assert torch.allclose(used.tokens[0].double(), expected, atol=1e-5)
        assert trigger, "no trigger token: the comparison would not test the projection"
        assert guard.negative() == "star"
    finally:
        pipe._erasekit_guards = ()
        enc._forward_hooks.clear()
    with pytest.raises(Exception, match="did not come from the text encoder"):
        fresh = Erasure.load(tmp_path / "s").attachment
        fresh.condition(None, 0, cond)


@pytest.mark.testbed
def test_safree_uses_the_projection_for_the_steps_its_filter_allows(testbed_pipe):
    erasure = erasekit.erase(testbed_pipe, "safree", {"targets": ["star"]}, progress=False)
    prompts = ["a red star on a black background", "a blue circle on a white background"]
    sampling = SamplingConfig(steps=20)
    plain = generate(testbed_pipe, prompts, [0, 1], sampling, progress=False)
    with erasure.applied(testbed_pipe):
        guarded = generate(testbed_pipe, prompts, [0, 1], sampling, progress=False)
        budgets = [erasure.attachment._seen[k][2] for k in list(erasure.attachment._seen)[-3:]]
    assert not np.array_equal(guarded[0], plain[0])
    assert max(budgets) > min(budgets)  # the filter gives the star prompt more projected steps than the circle's


@pytest.mark.testbed
def test_token_attacks_run_against_safree(testbed_pipe, tmp_path):
    """A soft prompt inserts vectors at the token embedding; SAFREE re-encodes masked prompts inside the
    text encoder's hook, which must not see those vectors (they have the attack's batch size)."""
    from erasekit.api.attacking import attack

    erasekit.erase(testbed_pipe, "safree", {"targets": ["star"]}, progress=False).save(tmp_path / "s")
    found = attack("testbed", None, ["soft-prompt", "p4d-k"], "star", budget=1, seeds=1, guard=tmp_path / "s", progress=False)
    assert [r.attack for r in found] == ["soft-prompt", "p4d-k"] and all(r.trials == 12 for r in found)


# -- SAeUron -----------------------------------------------------------------------------------------
def test_topk_sae_learns_a_sparse_code():
    from erasekit.training.sae import SAEConfig, TopKSAE, train_sae

    gen = torch.Generator().manual_seed(0)
    atoms = torch.randn(64, 16, generator=gen)
    idx = torch.randint(0, 64, (2048, 3), generator=gen)
    x = atoms[idx].sum(1) * (1 + torch.rand(2048, 1, generator=gen))  # 3 atoms of 64 per vector
    sae, stats = train_sae(x, SAEConfig(expansion=8, k=8, train_steps=300, batch=512, lr=3e-3), progress=False)
    assert isinstance(sae, TopKSAE) and stats["fvu"] < 0.3
    z = sae.encode(x[:10])
    assert ((z != 0).sum(-1) <= 8).all()
    assert torch.allclose(sae.w_dec.norm(dim=1), torch.ones(sae.w_dec.shape[0]), atol=1e-5)


def test_saeuron_guard_edits_only_selected_features_and_keeps_the_rest(tmp_path):
    pipe = _pipe()
    params = dict(train_steps=20, batch=256, images=1, steps=4, positions_per_map=16)  # default block: up_blocks.0.attentions.1
    erasure = erasekit.erase(pipe, "saeuron", {"targets": ["star"]}, progress=False, **params)
    guard = erasure.attachment
    assert erasure.weights == {} and all(n >= 1 for n in erasure.info["features_per_step"])
    erasure.save(tmp_path / "s")
    loaded = Erasure.load(tmp_path / "s")
    sampling = SamplingConfig(steps=4, guidance_scale=4.0)
    plain = generate(pipe, PROMPTS, SEEDS, sampling, progress=False)
    with loaded.applied(pipe):
        edited = generate(pipe, PROMPTS, SEEDS, sampling, progress=False)
    assert np.array_equal(generate(pipe, PROMPTS, SEEDS, sampling, progress=False), plain)  # removed
    assert not np.array_equal(edited, plain)
    # with no feature selected the hook hands the block's output on unchanged
    guard.selected = torch.zeros_like(guard.selected)
    with erasure.applied(pipe):
        assert np.array_equal(generate(pipe, PROMPTS, SEEDS, sampling, progress=False), plain)
    with pytest.raises(ConfigError, match="has no block"):
        erasekit.erase(pipe, "saeuron", {"targets": ["star"]}, progress=False, block="unet.up_blocks.9.attentions.0")


@pytest.mark.parametrize("error", ["corrected", "released"])
def test_saeuron_intervention_is_the_stated_formula(error):
    from erasekit.methods.diffusion.saeuron import SAeUronGuard
    from erasekit.training.sae import TopKSAE

    torch.manual_seed(0)
    sae = TopKSAE(6, 24, 4)
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    selected = torch.zeros(1, 24, dtype=torch.bool)
    selected[0, :12] = True
    mean_target, mean_all = torch.rand(1, 24) + 0.5, torch.full((1, 24), 0.01)
    guard = SAeUronGuard("unet.block", state, 4, torch.tensor([999.0]), selected, mean_target, mean_all, -1.0, error)

    class Pipe:
        unet = torch.nn.Module()

    Pipe.unet.block = torch.nn.Identity()
    handles = guard.install(Pipe)
    x_map = torch.randn(2, 6, 3, 3)
    out = Pipe.unet.block(x_map)
    for h in handles:
        h.remove()
    x = x_map.permute(0, 2, 3, 1).reshape(-1, 6)
    with torch.no_grad():
        z = sae.encode(x)
        edit = selected[0] & (z > mean_all[0])
        z_new = torch.where(edit, z * -1.0 * mean_target[0], z)
        want = x + (sae.decode(z_new) - sae.decode(z)) if error == "corrected" else sae.decode(z_new) + (sae.decode(z) - x)
    assert edit.any()
    assert torch.allclose(out.permute(0, 2, 3, 1).reshape(-1, 6), want, atol=1e-5)


# -- Concept Steerers ---------------------------------------------------------------------------------
def test_concept_steerers_add_the_steering_vector_to_the_prompt_and_subtract_it_from_the_unconditional(tmp_path):
    from erasekit.methods.diffusion.concept_steerers import layer_states
    from erasekit.models.diffusion import get_adapter

    pipe = _pipe()
    adapter = get_adapter(pipe)
    erasure = erasekit.erase(pipe, "concept-steerers", {"targets": ["star"]}, progress=False, train_steps=30, batch=256)
    erasure.save(tmp_path / "c")
    guard = Erasure.load(tmp_path / "c").attachment
    assert guard.path.endswith(".2") and guard.steer.shape == (pipe.tokenizer.model_max_length, 32)  # 3 layers: index 2
    plain = layer_states(pipe, guard.path, ["a red star"])[0]
    handles = guard.install(pipe)
    try:
        steered = layer_states(pipe, guard.path, ["a red star"])[0]
        assert torch.allclose(steered, plain + guard.steer, atol=1e-5)  # +s on what the prompt encodes
        from erasekit.core.attachments import get_module

        seen: list[torch.Tensor] = []
        probe = get_module(pipe, guard.path).register_forward_hook(
            lambda _m, _i, out: seen.append((out[0] if isinstance(out, tuple) else out).detach())
        )
        guard.unconditional(pipe, adapter)  # the unconditional "" gets -s
        probe.remove()
        for h in handles:
            h.remove()
        empty = layer_states(pipe, guard.path, [""])[0]
        assert torch.allclose(seen[0][0], empty - guard.steer, atol=1e-5)
        handles = []
    finally:
        for h in handles:
            h.remove()
    assert torch.allclose(layer_states(pipe, guard.path, ["a red star"])[0], plain)  # taken off again
    sampling = SamplingConfig(steps=4, guidance_scale=4.0)
    before = generate(pipe, PROMPTS, SEEDS, sampling, progress=False)
    with erasure.applied(pipe):
        assert not np.array_equal(generate(pipe, PROMPTS, SEEDS, sampling, progress=False), before)
    guard_np = erasekit.erase(pipe, "negative-prompt", {"targets": ["star"]}, progress=False)
    with erasure.applied(pipe), guard_np.applied(pipe), pytest.raises(ConfigError, match="two guards replace"):
        generate(pipe, PROMPTS, SEEDS, sampling, progress=False)
