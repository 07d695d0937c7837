"""The training engine and ESD: no silent no-ops, exact resume, LoRA round trip, parameter sets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from checks import assert_terms_have_gradient, state_hash

from erasekit import api
from erasekit.core.erasure import Erasure
from erasekit.core.errors import ConfigError
from erasekit.core.registry import get_method
from erasekit.core.request import ErasureRequest
from erasekit.methods.diffusion.esd import ESDObjective
from erasekit.models.diffusion import get_adapter
from erasekit.testing import tiny_pipeline
from erasekit.training import Workbench, parameter_spec, step_generator, trainable_parameters

REQUEST = {"targets": [{"concept": "cat"}], "preserve": ["dog"]}
FAST = {"iterations": 3, "ddim_steps": 4, "lr": 1e-3}


def fast(family: str) -> dict:
    return dict(FAST, size=8) if family == "flux" else dict(FAST)


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_esd_trains_only_its_parameters_and_leaves_the_teacher(family):
    pipe = tiny_pipeline(family)
    adapter = get_adapter(pipe)
    before = {name: state_hash(getattr(pipe, name)) for name in adapter.trainable_components(pipe)}
    config = get_method("esd").make_config(fast(family))
    bench = Workbench(pipe, adapter, [adapter.denoiser])
    params, _ = trainable_parameters(bench, parameter_spec("esd-x"), 0)
    assert_terms_have_gradient(ESDObjective(bench, ["cat"], config), params)

    erasure = api.erase(pipe, "esd", REQUEST, progress=False, **fast(family))
    assert {name: state_hash(getattr(pipe, name)) for name in before} == before  # the frozen teacher is the user's model
    trained = set(adapter.parameter_set(pipe, "xattn"))
    assert erasure.weights and set(erasure.weights) <= trained
    if family in ("sd", "sdxl"):  # (the last MMDiT block discards its text-stream queries: no gradient there)
        assert len(erasure.weights) == len(trained)  # every trainable tensor moved
    erased = copy.deepcopy(pipe)
    erasure.apply(erased)
    den, den0 = getattr(erased, adapter.denoiser), getattr(pipe, adapter.denoiser)
    for (k, p), (_, p0) in zip(den.named_parameters(), den0.named_parameters()):
        key = f"{adapter.denoiser}.{k}"
        if key not in trained:
            assert torch.equal(p, p0), key  # every other parameter is bit-identical
        else:
            assert torch.equal(p, p0) == (key not in erasure.weights), key


@pytest.mark.parametrize("train_method,expected", [("esd-x", "xattn"), ("esd-u", "noxattn"), ("esd-x-strict", "xattn-kv")])
def test_esd_parameter_sets(train_method, expected):
    pipe = tiny_pipeline("sd")
    adapter = get_adapter(pipe)
    keys = set(adapter.parameter_set(pipe, parameter_spec(train_method)))
    assert keys == set(adapter.parameter_set(pipe, expected))
    if expected == "noxattn":
        assert not any(
            ".attn2." in k or k.startswith(("unet.time_embedding", "unet.conv_out", "unet.conv_norm_out")) for k in keys
        )
        assert any(".attn1." in k for k in keys) and any("resnets" in k for k in keys)
    else:
        assert all(".attn2." in k for k in keys)
    if expected == "xattn-kv":
        assert all(".attn2.to_k." in k or ".attn2.to_v." in k for k in keys)


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_every_parameter_set_is_defined_and_nonempty(family):
    pipe = tiny_pipeline(family)
    adapter = get_adapter(pipe)
    for name in adapter.parameter_patterns:
        assert adapter.parameter_set(pipe, name)
    if family in ("sd", "sdxl"):
        te = adapter.parameter_set(pipe, "text-encoder")
        assert te and not any("embeddings" in k for k in te)
    with pytest.raises(ConfigError, match="not defined"):
        adapter.parameter_set(pipe, "nonsense")
    with pytest.raises(ConfigError, match="selects no parameter"):
        adapter.parameter_set(pipe, ["^no-such-module"])


def test_partial_denoise_reports_the_timestep_it_reached():
    pipe = tiny_pipeline("sd")
    bench = Workbench(pipe, get_adapter(pipe), ["unet"])
    cond, uncond = bench.cond(["cat"]), bench.cond([""])
    sched = copy.deepcopy(bench.sample_scheduler)
    sched.set_timesteps(10)
    for stop in (0, 3, 9):
        x, t = bench.partial_denoise(cond, uncond, 10, stop, 3.0, torch.Generator().manual_seed(0))
        assert int(t[0]) == int(sched.timesteps[stop])
    _, t_end = bench.partial_denoise(cond, uncond, 10, 10, 3.0, torch.Generator())  # the whole sampler: clean latents
    assert int(t_end[0]) == 0
    with pytest.raises(ConfigError):
        bench.partial_denoise(cond, uncond, 10, 11, 3.0, torch.Generator())
    with pytest.raises(ConfigError, match="unconditional"):
        bench.partial_denoise(cond, None, 10, 3, 3.0, torch.Generator())


def test_partial_denoise_steps_with_classifier_free_guidance():
    """One step of the guided sampler is DDIM on ``f(∅) + g (f(c) − f(∅))`` (what ESD, ANT and the soft
    prompt's trajectory start from)."""
    pipe = tiny_pipeline("sd")
    bench = Workbench(pipe, get_adapter(pipe), ["unet"])
    cond, uncond = bench.cond(["cat", "dog"]), bench.cond(["", ""])
    x, t = bench.partial_denoise(cond, uncond, 10, 1, 3.0, torch.Generator().manual_seed(0))
    sched = copy.deepcopy(bench.sample_scheduler)
    sched.set_timesteps(10)
    x0 = torch.randn(bench.latents_shape(2), generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    t0 = sched.timesteps[0].expand(2)
    with torch.no_grad():
        u, c = bench.teacher_predict(x0, t0, uncond), bench.teacher_predict(x0, t0, cond)
    want = sched.step(u + 3.0 * (c - u), sched.timesteps[0], x0).prev_sample
    assert torch.allclose(x, want, atol=1e-5) and int(t[0]) == int(sched.timesteps[1])
    plain, _ = bench.partial_denoise(cond, None, 10, 1, 1.0, torch.Generator().manual_seed(0))  # g = 1: f(c) alone
    assert torch.allclose(plain, sched.step(c, sched.timesteps[0], x0).prev_sample, atol=1e-5)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, monkeypatch):
    pipe = tiny_pipeline("sd")
    args = dict(iterations=6, ddim_steps=4, lr=1e-3, checkpoint_every=2)
    full = api.erase(pipe, "esd", REQUEST, progress=False, **args)

    original = ESDObjective.loss

    def crash_at_step_5(self, step, gen):
        if step == 5:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, step, gen)

    monkeypatch.setattr(ESDObjective, "loss", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        api.erase(pipe, "esd", REQUEST, progress=False, checkpoint_dir=tmp_path, **args)
    monkeypatch.setattr(ESDObjective, "loss", original)
    resumed = api.erase(pipe, "esd", REQUEST, progress=False, checkpoint_dir=tmp_path, resume=True, **args)
    assert resumed.info["training"]["start_step"] == 4
    assert set(resumed.weights) == set(full.weights)
    for k in full.weights:
        assert torch.equal(resumed.weights[k], full.weights[k]), k
    with pytest.raises(ConfigError, match="another run.*params.lr"):
        api.erase(pipe, "esd", REQUEST, progress=False, checkpoint_dir=tmp_path, resume=True, **dict(args, lr=5e-4))


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_lora_output_loads_with_diffusers_and_matches_the_merged_model(tmp_path, family):
    pipe = tiny_pipeline(family)
    erasure = api.erase(pipe, "esd", REQUEST, progress=False, lora_rank=2, **fast(family))
    assert not erasure.weights and erasure.lora
    assert all(".attn2." in k for k in erasure.lora)
    erasure.save(tmp_path / "er")
    loaded = Erasure.load(tmp_path / "er")
    merged = loaded.apply(copy.deepcopy(pipe))
    with_lora = copy.deepcopy(pipe)
    with_lora.load_lora_weights(str(tmp_path / "er"))
    adapter = get_adapter(pipe)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(adapter.latent_shape(pipe, 2), generator=gen)
    t = torch.tensor([500, 100])
    with torch.no_grad():
        cond = adapter.conditioning(pipe, ["a cat", "a dog"])
        a = adapter.predict(merged.unet, x, t, cond)
        b = adapter.predict(with_lora.unet, x, t, cond)
        c = adapter.predict(pipe.unet, x, t, cond)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert not torch.allclose(a, c, atol=1e-6)  # the LoRA does something
    merged_again = loaded.remove(merged)
    assert all(torch.equal(p, q) for p, q in zip(merged_again.unet.parameters(), pipe.unet.parameters()))


def test_training_errors_are_clear():
    pipe = tiny_pipeline("sd")
    with pytest.raises(ConfigError, match="iterations must be >= 1"):
        api.erase(pipe, "esd", REQUEST, progress=False, iterations=0)
    with pytest.raises(ConfigError, match="not defined"):
        api.erase(pipe, "esd", REQUEST, progress=False, train_method="esd-q", iterations=1)
    with pytest.raises(ConfigError, match="checkpoint"):
        api.erase(pipe, "esd", REQUEST, progress=False, resume=True, iterations=1)
    request = ErasureRequest.from_dict(REQUEST)
    assert request.concepts == ["cat"]


# -- Ablating Concepts, SalUn, few-shot text-encoder unlearning --------------------------------------------
SMALL = {"iterations": 2, "n_images": 2, "sample_steps": 2, "batch_size": 2, "lr": 1e-3}


def changed_keys(erasure) -> set[str]:
    return set(erasure.weights)


def test_ablating_terms_carry_gradient_and_only_kv_moves():
    from erasekit.methods.diffusion.ablating import AblatingObjective, prompt_pairs

    pipe = tiny_pipeline("sd")
    adapter = get_adapter(pipe)
    request = ErasureRequest.from_dict({"targets": [{"concept": "cat", "anchor": "dog"}]})
    config = get_method("ablating").make_config(dict(SMALL, prior_weight=1.0))
    with Workbench.for_parameters(pipe, adapter, "xattn-kv") as bench:
        params, _ = trainable_parameters(bench, "xattn-kv", 0)
        objective = AblatingObjective(bench, prompt_pairs(request, "x"), config, torch.Generator().manual_seed(0))
        assert_terms_have_gradient(objective, params)
    erasure = api.erase(pipe, "ablating", request, progress=False, **SMALL)
    assert changed_keys(erasure) and changed_keys(erasure) <= set(adapter.parameter_set(pipe, "xattn-kv"))
    with pytest.raises(ConfigError, match="non-empty anchor"):
        api.erase(pipe, "ablating", {"targets": [{"concept": "cat", "anchor": ""}]}, progress=False, **SMALL)


class BrightJudge:
    """A fake judge: an image 'shows' the concept when its mean brightness is above the median of its batch."""

    def knows(self, concept):
        return concept == "logo"

    def shows(self, images, concept):
        m = images.reshape(len(images), -1).mean(1)
        return m > np.median(m)


def test_ablating_an_implicit_concept_filters_its_own_prompt_and_denoises_on_clean_images():
    from erasekit.methods.diffusion.ablating import AblatingObjective, prompt_pairs

    pipe = tiny_pipeline("sd")
    adapter = get_adapter(pipe)
    request = ErasureRequest.from_dict({"targets": [{"concept": "logo", "prompts": ["a photo of a cat"]}]})
    pairs = prompt_pairs(request, "a dog")
    assert pairs == [("a photo of a cat", "a photo of a cat", "logo")]  # anchored on its own trigger
    config = get_method("ablating").make_config(dict(SMALL, n_images=4))
    with Workbench.for_parameters(pipe, adapter, "xattn-kv") as bench:
        params, _ = trainable_parameters(bench, "xattn-kv", 0)
        objective = AblatingObjective(bench, pairs, config, torch.Generator().manual_seed(0), BrightJudge())
        kept = bench.decode_images(objective.anchors.latents)
        assert objective.anchors.rejected > 0 and objective.noise_based == [True]
        assert 1 <= len(kept) <= 4
        assert_terms_have_gradient(objective, params)
        # the noise-based target is the denoising target, so the loss is not identically zero
        assert float(objective.loss(0, step_generator(0, 0))["ablate"].detach()) > 0
        with pytest.raises(ConfigError, match="needs images without it"):
            AblatingObjective(bench, pairs, config, torch.Generator().manual_seed(0), None)
        model = get_method("ablating").make_config(dict(SMALL, loss="model"))
        with pytest.raises(ConfigError, match="loss=noise"):
            AblatingObjective(bench, pairs, model, torch.Generator().manual_seed(0), BrightJudge())
    with pytest.raises(ConfigError, match="needs images without it"):
        api.erase(pipe, "ablating", request, progress=False, **SMALL)
    erasure = api.erase(pipe, "ablating", request, progress=False, judge=BrightJudge(), **SMALL)
    assert erasure.info["noise_based_pairs"] == 1 and erasure.info["anchor_images_rejected"] > 0


def test_ablating_takes_your_own_clean_images_for_an_implicit_concept(tmp_path):
    from PIL import Image

    pipe = tiny_pipeline("sd")
    for i in range(3):
        Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()).save(tmp_path / f"{i}.png")
    request = {"targets": [{"concept": "logo", "prompts": ["a photo of a cat"]}]}
    erasure = api.erase(pipe, "ablating", request, progress=False, anchor_image_dir=str(tmp_path), **SMALL)
    assert erasure.info["anchor_images"] == 3 and erasure.info["noise_based_pairs"] == 1 and erasure.weights
    with pytest.raises(Exception, match="anchor_image_dir .* holds no"):
        api.erase(pipe, "ablating", request, progress=False, anchor_image_dir=str(tmp_path / "none"), **SMALL)


def test_salun_mask_keeps_its_share_and_masked_weights_do_not_move():
    from erasekit.methods.diffusion.salun import SalUnObjective, forget_retain_prompts, saliency_mask
    from erasekit.training import ImageBank

    pipe = tiny_pipeline("sd")
    adapter = get_adapter(pipe)
    request = ErasureRequest.from_dict({"targets": [{"concept": "cat", "anchor": "dog"}], "preserve": ["bird"]})
    config = get_method("salun").make_config(dict(SMALL, mask_ratio=0.3, mask_batches=1))
    with Workbench.for_parameters(pipe, adapter, "full") as bench:
        params, _ = trainable_parameters(bench, "full", 0)
        forget_p, pseudo_p, retain_p = forget_retain_prompts(request, "")
        assert (forget_p, pseudo_p, retain_p) == (["cat"], ["dog"], ["bird"])
        # without an anchor the pseudo prompt is another class (a preserved concept), as in the reference
        no_anchor = ErasureRequest.from_dict({"targets": ["cat", "car"], "preserve": ["bird", "tree"]})
        assert forget_retain_prompts(no_anchor, "")[1] == ["bird", "tree"]
        assert forget_retain_prompts(no_anchor, "", "anchor")[1] == ["", ""]
        gen = torch.Generator().manual_seed(0)
        forget = ImageBank.draw(bench, forget_p, 2, 2, 3.0, gen, None)
        retain = ImageBank.draw(bench, retain_p, 2, 2, 3.0, gen, None)
        mask = saliency_mask(bench, params, forget, config)
        kept = float(sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values()))
        assert 0.29 <= kept <= 0.31
        # |Σ g| over batches, not Σ |g|: two batches whose gradients cancel leave a small saliency
        two = get_method("salun").make_config(dict(SMALL, mask_ratio=0.3, mask_batches=2))
        grads = {}
        real_grad = torch.autograd.grad

        def record(loss, inputs, **kw):
            out = real_grad(loss, inputs, **kw)
            grads.setdefault("calls", []).append([g.clone() for g in out])
            return out

        torch.autograd.grad = record
        try:
            mask2 = saliency_mask(bench, params, forget, two)
        finally:
            torch.autograd.grad = real_grad
        summed = {k: (a + b).abs() for k, a, b in zip(params, *grads["calls"])}
        from erasekit.training import top_share_mask

        expected = top_share_mask(summed, 0.3)
        assert all(torch.equal(mask2[k], expected[k]) for k in params)
        assert_terms_have_gradient(SalUnObjective(bench, forget, bench.cond(pseudo_p), retain, config), params)
    erasure = api.erase(pipe, "salun", request, progress=False, **dict(SMALL, mask_ratio=0.3, mask_batches=1))
    moved = sum(int((erasure.weights[k] != get_tensor_of(pipe, k)).sum()) for k in erasure.weights)
    total = sum(p.numel() for p in pipe.unet.parameters())
    assert 0 < moved <= 0.31 * total  # only masked-in entries can move


def get_tensor_of(pipe, key):
    from erasekit.core.erasure import get_tensor

    return get_tensor(pipe, key).detach()


def test_te_unlearn_trains_only_text_encoder_mlps_and_last_attention(tmp_path):
    from PIL import Image

    from erasekit.methods.diffusion.te_unlearn import TEUnlearnObjective, text_parameter_patterns
    from erasekit.training import ImageBank

    pipe = tiny_pipeline("sd")
    adapter = get_adapter(pipe)
    spec = text_parameter_patterns(pipe)
    config = get_method("te-unlearn").make_config(SMALL)
    with Workbench.for_parameters(pipe, adapter, spec) as bench:
        assert set(bench.student) == {"text_encoder"}
        params, _ = trainable_parameters(bench, spec, 0)
        bank = ImageBank.draw(bench, ["cat"], 2, 2, 3.0, torch.Generator().manual_seed(0), None)
        assert_terms_have_gradient(TEUnlearnObjective(bench, bank, ["cat"], config), params)
        assert all(p.grad is None for p in pipe.unet.parameters())  # nothing accumulates in the user's frozen UNet
    unet_before = state_hash(pipe.unet)
    erasure = api.erase(pipe, "te-unlearn", REQUEST, progress=False, **SMALL)
    keys = changed_keys(erasure)
    last = pipe.text_encoder.config.num_hidden_layers - 1
    assert keys and all(".mlp." in k or f"layers.{last}.self_attn." in k for k in keys)
    assert state_hash(pipe.unet) == unet_before
    for i in range(2):  # the image_dir path
        Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()).save(tmp_path / f"{i}.png")
    erasure = api.erase(pipe, "te-unlearn", REQUEST, progress=False, image_dir=str(tmp_path), iterations=2, lr=1e-3)
    assert erasure.info["images"] == 2
    with pytest.raises(Exception, match="no .png"):
        api.erase(pipe, "te-unlearn", REQUEST, progress=False, image_dir=str(tmp_path / "nothing"), iterations=1)


def test_half_precision_models_train_a_float32_student():
    pipe = tiny_pipeline("sd").to(torch.bfloat16)
    before = state_hash(pipe.unet)
    erasure = api.erase(pipe, "esd", REQUEST, progress=False, iterations=2, ddim_steps=3, lr=1e-2)
    assert erasure.weights and all(v.dtype == torch.bfloat16 for v in erasure.weights.values())
    assert state_hash(pipe.unet) == before


def test_a_half_precision_cast_that_rounds_the_update_away_is_refused():
    """F12: a float32 update far below bfloat16's resolution would mostly vanish in the cast; the
    erasure is refused with the share kept, and a large enough update passes."""
    from erasekit.api.erasing import MIN_UPDATE_KEPT, check_cast_keeps_update, update_kept
    from erasekit.core.errors import ErasekitError

    original = {"w": torch.full((64,), 1.0, dtype=torch.bfloat16)}
    tiny = {"w": torch.full((64,), 1.0 + 1e-4)}  # bf16 spacing at 1.0 is 2^-7: rounds back to 1.0
    cast = {"w": tiny["w"].to(torch.bfloat16)}
    assert update_kept(tiny, cast, original) == 0.0
    with pytest.raises(ErasekitError, match=r"keeps only 0% of the trained update.*float32"):
        check_cast_keeps_update("npo", tiny, cast, original)
    big = {"w": torch.full((64,), 1.0 + 2.0**-6)}  # exactly representable: kept whole
    assert update_kept(big, {"w": big["w"].to(torch.bfloat16)}, original) == pytest.approx(1.0)
    check_cast_keeps_update("npo", big, {"w": big["w"].to(torch.bfloat16)}, original)
    half = {"w": torch.cat([torch.full((32,), 1.0 + 2.0**-6), torch.full((32,), 1.0 + 1e-4)])}  # nearly all kept
    assert MIN_UPDATE_KEPT < update_kept(half, {"w": half["w"].to(torch.bfloat16)}, original) < 1.0
    fp32 = {"w": torch.ones(64)}  # a float32 model has nothing to refuse
    check_cast_keeps_update("npo", tiny, {"w": tiny["w"]}, fp32)
