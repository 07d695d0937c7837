"""AdvUnlearn, ANT, Receler, SPM and the soft-prompt attack: every term carries gradient, insertions
really change the embedding, attachments apply and remove exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from checks import assert_terms_have_gradient, state_hash

from erasekit import api
from erasekit.attacks.diffusion.soft_prompt import SoftPrompt, SoftPromptConfig, optimise_soft_prompt
from erasekit.core.erasure import Erasure
from erasekit.core.errors import ConfigError, IncompatibleErasureError
from erasekit.core.registry import get_method
from erasekit.models.diffusion import get_adapter
from erasekit.testing import tiny_pipeline
from erasekit.training import Workbench, step_generator, trainable_parameters

REQUEST = {"targets": [{"concept": "cat"}], "preserve": ["dog"]}


@pytest.fixture(scope="module")
def sd():
    return tiny_pipeline("sd")


def unet_output(pipe, prompt: str = "a cat") -> torch.Tensor:
    adapter = get_adapter(pipe)
    x = torch.randn(adapter.latent_shape(pipe, 1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return adapter.predict(pipe.unet, x, torch.tensor([300]), adapter.conditioning(pipe, [prompt]))


def test_soft_prompt_really_changes_the_embedding_and_is_optimised(sd):
    adapter = get_adapter(sd)
    with Workbench(sd, adapter, ["unet"]) as bench:
        soft = SoftPrompt(sd, SoftPromptConfig(n_tokens=2, steps=3, lr=0.1))
        plain = bench.cond([soft.text("cat")]).tokens
        inserted = soft.cond(bench, ["cat"])
        assert torch.allclose(plain, inserted.tokens.detach())  # initialised at the filler word's embedding
        soft.vectors.data.add_(torch.randn_like(soft.vectors))
        moved = soft.cond(bench, ["cat"]).tokens
        assert not torch.allclose(moved.detach(), plain)  # the vectors really reach the denoiser's input
        (g,) = torch.autograd.grad(moved.sum(), [soft.vectors])
        assert g.abs().sum() > 0
        before = soft.vectors.detach().clone()
        x = torch.randn(adapter.latent_shape(sd, 1))
        t = torch.tensor([500])
        target = bench.teacher_predict(x, t, bench.cond(["cat"]))
        optimise_soft_prompt(bench, soft, x, t, ["cat"], target, student=False)
        assert not torch.equal(before, soft.vectors.detach())
        assert all(p.grad is None for p in sd.unet.parameters())


def test_advunlearn_terms_carry_gradient_and_only_text_layers_move(sd):
    from erasekit.methods.diffusion.advunlearn import AdvUnlearnObjective

    adapter = get_adapter(sd)
    config = get_method("advunlearn").make_config({"iterations": 2, "warmup": 0, "attack_steps": 2, "ddim_steps": 3, "lr": 1e-3})
    with Workbench.for_parameters(sd, adapter, "text-encoder") as bench:
        params, _ = trainable_parameters(bench, "text-encoder", 0)
        objective = AdvUnlearnObjective(bench, ["cat"], ["dog"], config)
        assert objective.attacking(0)
        assert_terms_have_gradient(objective, params)
        # the erase term's point, one fresh point per further attack step, and the retain prompt's own point
        import erasekit.methods.diffusion.advunlearn as module

        drawn, real = [], module.esd_point
        module.esd_point = lambda bench, cond, *a, **k: drawn.append(cond) or real(bench, cond, *a, **k)
        try:
            objective.loss(0, step_generator(0, 0))
        finally:
            module.esd_point = real
        assert len(drawn) == 1 + (config.attack_steps - 1) + 1
        retain_cond = objective.retain_cond.select([0])
        assert torch.equal(drawn[-1].tokens, retain_cond.tokens) and not torch.equal(drawn[0].tokens, retain_cond.tokens)
        # the retain batch (5 as released) is drawn without replacement; fewer than 5 unseen: the set starts over
        many = AdvUnlearnObjective(bench, ["cat"], [f"p{i}" for i in range(10)], config)
        gen = torch.Generator().manual_seed(0)
        first, second, third = many.retain_rows(gen), many.retain_rows(gen), many.retain_rows(gen)
        assert sorted(first + second) == list(range(10)) and len(set(third)) == 5
    unet_before = state_hash(sd.unet)
    erasure = api.erase(sd, "advunlearn", REQUEST, progress=False, iterations=2, warmup=1, attack_steps=2, ddim_steps=3, lr=1e-3)
    assert erasure.weights and all(k.startswith("text_encoder.") and "embeddings" not in k for k in erasure.weights)
    assert state_hash(sd.unet) == unet_before
    assert erasure.info["last_attack_loss"] is not None


def test_advunlearn_retains_object_prompts_without_preserved_concepts(sd, monkeypatch):
    """AdvUnlearn's README retains COCO object prompts (coco_object); the targets' own words are left out."""
    import erasekit.methods.diffusion.advunlearn as module
    from erasekit.models.profile import COCO_OBJECTS, ModelProfile

    seen = {}
    real = module.AdvUnlearnObjective.__init__

    def spy(self, bench, prompts, retain, config):
        seen[config.retain_set] = list(retain)
        real(self, bench, prompts, retain, config)

    monkeypatch.setattr(module.AdvUnlearnObjective, "__init__", spy)
    for retain_set in ("objects", "empty"):
        api.erase(sd, "advunlearn", {"targets": [{"concept": "cat"}]}, progress=False, iterations=1, warmup=5,
                  ddim_steps=2, lr=1e-3, retain_set=retain_set)  # fmt: skip
    assert seen["empty"] == [""]
    with pytest.raises(ConfigError, match="retain_set applies without preserved concepts"):
        api.erase(sd, "advunlearn", REQUEST, progress=False, iterations=1, retain_set="empty")
    assert len(seen["objects"]) == len(COCO_OBJECTS) - 1 and "a photo of cat" not in seen["objects"]
    assert "a photo of dog" in seen["objects"]
    testbed = ModelProfile(name="testbed").retain_prompts(("star",))
    assert "a star" not in testbed and "a circle" in testbed and "a zorbo" in testbed


def test_ant_all_four_terms_carry_gradient(sd):
    from erasekit.methods.diffusion.ant import ANTObjective, gradient_mask

    adapter = get_adapter(sd)
    config = get_method("ant").make_config(
        {"iterations": 2, "ddim_steps": 4, "before_step": 2, "mask_runs": 2, "mask_iterations": 2}
    )
    with Workbench.for_parameters(sd, adapter, "full") as bench:
        params, _ = trainable_parameters(bench, "full", 0)
        objective = ANTObjective(bench, ["cat"], config)
        terms = objective.loss(0, step_generator(0, 0))
        assert set(terms) == {"keep", "uncond_early", "reverse", "uncond_late"}
        assert_terms_have_gradient(objective, params)  # the reference's unconditional terms had none
        before = {k: p.detach().clone() for k, p in params.items()}
        mask = gradient_mask(params, objective, config)
        assert all(torch.equal(before[k], p) for k, p in params.items())  # the gradient runs' updates are undone
        kept = sum(float(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
        assert 0 < kept <= 0.5  # two runs' halves intersected
    erasure = api.erase(
        sd, "ant", REQUEST, progress=False, iterations=2, ddim_steps=4, before_step=2, mask_runs=1, mask_iterations=1,
        mask_ratio=0.2, lr=1e-3,
    )  # fmt: skip
    moved = sum(int((erasure.weights[k] != dict(sd.unet.named_parameters())[k[5:]]).sum()) for k in erasure.weights)
    assert 0 < moved <= 0.21 * sum(p.numel() for p in sd.unet.parameters())


def test_ant_mask_keeps_each_tensors_share_as_generate_mask_does():
    """generate_mask.py (ANT as released): ascending argsort, ranks < int(n * 0.5) -> the lowest half."""
    from erasekit.methods.diffusion.ant import per_tensor_share

    g = torch.tensor([0.1, 0.9, 0.5, 0.3])
    assert per_tensor_share(g, 0.5, top=False).tolist() == [1.0, 0.0, 0.0, 1.0]  # the released code's own example
    assert per_tensor_share(g, 0.5, top=True).tolist() == [0.0, 1.0, 1.0, 0.0]
    big = torch.randn(7, 11, generator=torch.Generator().manual_seed(0)).abs()
    low = per_tensor_share(big, 0.5, top=False)
    assert int(low.sum()) == int(77 * 0.5) and big[low.bool()].max() < big[~low.bool()].min()


def test_receler_erasers_start_as_identity_train_and_attach_exactly(sd, tmp_path):
    from erasekit.methods.diffusion.receler import ReceleErasers, ReceleObjective
    from erasekit.training.attention import CrossAttentionProbe

    adapter = get_adapter(sd)
    # the soft map (mask_threshold 0): the tiny random model attends almost uniformly, so the reference's
    # binarisation at 0.1 marks every position as the concept and leaves the penalty nothing to act on
    config = get_method("receler").make_config(
        {"iterations": 2, "adv_warmup": 0, "adv_every": 1, "adv_steps": 2, "ddim_steps": 3, "rank": 4, "mask_threshold": 0.0,
         "adv_tokens": 4}
    )  # fmt: skip
    with Workbench(sd, adapter, ["unet"]) as bench:
        student = bench.student["unet"]
        erasers = ReceleErasers.build(student, "unet", 4)
        from erasekit.training.diffusion import PipeView

        handles = erasers.install(PipeView(sd, bench.student))
        maps = CrossAttentionProbe(student)
        handles += maps.install()
        assert torch.equal(unet_output(PipeView(sd, bench.student)), unet_output(sd))  # zero-initialised: identity
        params = erasers.parameters()
        objective = ReceleObjective(bench, erasers, maps, ["a cat"], ["cat"], config)
        terms = objective.loss(0, step_generator(0, 0))
        assert {"esd", "reg", "esd_adv"} <= set(terms)
        assert len(maps.maps) == 0 or maps.positions is None
        # (the localisation penalty is zero at the zero-initialised output; the helper re-checks it
        # after a small move of the erasers)
        assert_terms_have_gradient(objective, params)
        for h in handles:
            h.remove()
    erasure = api.erase(
        sd,
        "receler",
        REQUEST,
        progress=False,
        iterations=2,
        adv_warmup=0,
        adv_every=1,
        adv_steps=2,
        adv_tokens=4,
        ddim_steps=3,
        rank=4,
        lr=1e-2,
    )
    assert not erasure.weights and erasure.attachment is not None
    erasure.save(tmp_path / "rec")
    loaded = Erasure.load(tmp_path / "rec")
    base = unet_output(sd)
    pipe = copy.deepcopy(sd)
    loaded.apply(pipe)
    assert not torch.allclose(unet_output(pipe), base)
    loaded.remove(pipe)
    assert torch.equal(unet_output(pipe), base)
    with pytest.raises(IncompatibleErasureError, match="cannot hold"):
        api.export_pipeline(tmp_path / "rec", str(tmp_path / "nowhere"), tmp_path / "out")


def test_spm_released_anchor_batch_is_the_second_half_of_the_interleaved_list(sd):
    """SPM as released anchors [∅, s3, ∅, s4] of [∅, s1, ∅, s2, ∅, s3, ∅, s4] (predict_noise's second half)."""
    from erasekit.methods.diffusion.spm import anchor_batch, random_anchor

    adapter = get_adapter(sd)
    with Workbench(sd, adapter, ["unet"]) as bench:
        target, empty = bench.cond(["cat"]), bench.cond([""])
        gen = torch.Generator().manual_seed(3)
        draws = [random_anchor(target, gen).tokens for _ in range(4)]
        got = anchor_batch(target, empty, 4, True, torch.Generator().manual_seed(3)).tokens
        assert got.shape[0] == 4
        assert torch.equal(got[0], empty.tokens[0]) and torch.equal(got[2], empty.tokens[0])
        assert torch.equal(got[1], draws[2][0]) and torch.equal(got[3], draws[3][0])
        odd = anchor_batch(target, empty, 3, True, torch.Generator().manual_seed(3)).tokens  # [s2, ∅, s3]
        assert torch.equal(odd[0], draws[1][0]) and torch.equal(odd[1], empty.tokens[0]) and torch.equal(odd[2], draws[2][0])
        intended = anchor_batch(target, empty, 4, False, torch.Generator().manual_seed(3)).tokens
        assert torch.equal(intended, torch.cat(draws))  # anchors="random": every draw, no ∅


def test_spm_transport_scales_by_similarity_and_spms_compose(sd, tmp_path):
    from erasekit.methods.diffusion.spm import SPMObjective

    adapter = get_adapter(sd)
    config = get_method("spm").make_config({"iterations": 2, "ddim_steps": 3})
    with Workbench(sd, adapter, ["unet"]) as bench:
        from erasekit.methods.diffusion.spm import SPMAdapters, last_word_features
        from erasekit.training.diffusion import PipeView

        spm = SPMAdapters.build(bench.student["unet"], "unet", last_word_features(bench, ["cat"]))
        spm.fixed_scale = 1.0
        handles = spm.install(PipeView(sd, bench.student))
        params = spm.parameters()
        assert_terms_have_gradient(SPMObjective(bench, ["cat"], ["dog"], config), params)
        assert_terms_have_gradient(SPMObjective(bench, ["cat"], None, config), params)  # the reference's random anchors
        from erasekit.methods.diffusion.spm import random_anchor

        target = bench.cond(["cat"])
        a, b = random_anchor(target, torch.Generator().manual_seed(0)), random_anchor(target, torch.Generator().manual_seed(1))
        ratio = float(a.tokens.norm() / target.tokens.norm())
        assert 0.8 <= ratio <= 1.2 and not torch.equal(a.tokens, b.tokens)
        cos = torch.nn.functional.cosine_similarity(a.tokens.reshape(-1), target.tokens.reshape(-1), dim=0)
        assert abs(float(cos)) < 0.5  # a random direction, not the target's
        for h in handles:
            h.remove()
        cat = spm.transport(bench.cond(["cat"]).tokens)
        other = spm.transport(bench.cond(["xyz qq"]).tokens)
        assert float(cat) > 0.99 and float(other) < float(cat)
    first = api.erase(sd, "spm", REQUEST, progress=False, iterations=2, ddim_steps=3, lr=1e-2)
    second = api.erase(sd, "spm", {"targets": [{"concept": "dog"}]}, progress=False, iterations=2, ddim_steps=3, lr=1e-2)
    first.save(tmp_path / "a")
    second.save(tmp_path / "b")
    pipe = copy.deepcopy(sd)
    base = unet_output(pipe)
    a, b = Erasure.load(tmp_path / "a"), Erasure.load(tmp_path / "b")
    a.apply(pipe)
    only_a = unet_output(pipe)
    b.apply(pipe)
    both = unet_output(pipe)
    assert not torch.allclose(only_a, base) and not torch.allclose(both, only_a)
    b.remove(pipe)
    assert torch.equal(unet_output(pipe), only_a)
    a.remove(pipe)
    assert torch.equal(unet_output(pipe), base)


@pytest.mark.testbed
def test_receler_regularises_with_exact_masks_on_the_testbed(testbed_pipe):
    from erasekit.core.request import ErasureRequest
    from erasekit.methods.diffusion.receler import ReceleErasers, ReceleObjective, _exact_masks, _masked_energy
    from erasekit.models.profile import profile_of
    from erasekit.training.attention import layer_mask
    from erasekit.training.diffusion import PipeView

    adapter = get_adapter(testbed_pipe)
    config = get_method("receler").make_config({"iterations": 2, "adv_every": 0, "ddim_steps": 3, "rank": 4, "n_images": 3})
    request = ErasureRequest(["star"])
    with Workbench(testbed_pipe, adapter, ["unet"]) as bench:
        student = bench.student["unet"]
        erasers = ReceleErasers.build(student, "unet", 4)
        handles = erasers.install(PipeView(testbed_pipe, bench.student))
        exact = _exact_masks(bench, request, ["star"], config, profile_of(testbed_pipe))
        assert exact.latents.shape[0] == 3 and exact.masks.shape[1:] == (32, 32) and 0 < float(exact.masks.mean()) < 0.5
        objective = ReceleObjective(bench, erasers, None, ["star"], ["star"], config, exact)
        assert {"esd", "reg"} == set(objective.loss(0, step_generator(0, 0)))
        assert_terms_have_gradient(objective, erasers.parameters())
        for h in handles:
            h.remove()
    # the penalty counts eraser output outside the concept's region only
    mask = torch.zeros(1, 32, 32)
    mask[:, :16] = 1.0
    m = layer_mask(mask, 64)
    assert m.shape == (1, 64) and float(m.mean()) == 0.5
    inside, outside = torch.zeros(1, 64, 8), torch.zeros(1, 64, 8)
    inside[:, :32], outside[:, 32:] = 1.0, 1.0
    # released normalisation: Σ over outside pixels of the channel mean, divided by their number
    assert float(_masked_energy([inside], [m])) == 0.0 and abs(float(_masked_energy([outside], [m])) - 1.0) < 1e-6
    half = outside.clone()
    half[:, 48:] = 0.0
    assert abs(float(_masked_energy([half], [m])) - 0.5) < 1e-6
    erasure = api.erase(
        testbed_pipe, "receler", request, progress=False, iterations=2, adv_every=0, ddim_steps=3, rank=4, n_images=2
    )
    assert erasure.info["masks"] == "exact (testbed world renders)"


def test_receler_mask_is_the_released_get_mask():
    """concept_reg.get_mask on fixed maps: the quarter-side layers averaged, min-max, >= 0.1, nearest resize."""
    import torch.nn.functional as F

    from erasekit.methods.diffusion.receler import concept_masks

    gen = torch.Generator().manual_seed(0)
    maps = [torch.rand(2, s * s, generator=gen) for s in (8, 4, 4, 2, 4, 8)]  # a 16-latent UNet's layers
    got = concept_masks(maps, 16, 0.1)
    avg = torch.stack([m.view(2, 4, 4) for m in maps if m.shape[1] == 16], dim=1).mean(1)  # res == 16 / 4
    lo = avg.min(dim=1, keepdim=True)[0].min(dim=2, keepdim=True)[0]
    hi = avg.max(dim=1, keepdim=True)[0].max(dim=2, keepdim=True)[0]
    mask = (avg - lo) / (hi - lo)
    mask[mask >= 0.1] = 1
    mask[mask < 0.1] = 0
    for m, g in zip(maps, got):
        side = int(m.shape[1] ** 0.5)
        assert torch.equal(g, F.interpolate(mask.unsqueeze(0), (side, side)).squeeze(0).flatten(1))
    assert 0 < float(got[1].mean()) < 1


def test_receler_output_space_adversary_reaches_the_unet(sd):
    """The adversary overwrites text-encoder outputs after the concept, out of place: its conditioning
    differs at exactly those slots, carries gradient, and moves the prediction (the released write did not)."""
    from erasekit.methods.diffusion.receler import OutputSpaceAdversary

    adapter = get_adapter(sd)
    config = get_method("receler").make_config({"adv_tokens": 3, "adv_steps": 2})
    with Workbench(sd, adapter, ["unet"]) as bench:
        cond = bench.cond(["a cat"])
        adversary = OutputSpaceAdversary(cond, [[2]], config, torch.Generator().manual_seed(0))
        start = adversary.vectors[0].detach().clone()
        assert float(start.min()) >= 0 and float(start.max()) < 1  # torch.rand, as released
        gen = torch.Generator().manual_seed(1)
        b = bench.noised(torch.randn(1, *bench.latents_shape(1)[1:], generator=gen), bench.sample_t(1, gen), gen)
        target = bench.teacher_predict(b.xt, b.t, cond)
        adv = adversary.optimise(bench, cond, 0, b.xt, b.t, target)
        changed = (adv.tokens != cond.tokens).any(-1)[0].nonzero().flatten().tolist()
        assert changed == [3, 4, 5]
        assert not torch.equal(adversary.vectors[0].detach(), start)
        assert not torch.allclose(bench.predict(b.xt, b.t, adv), bench.predict(b.xt, b.t, cond))
        with pytest.raises(ConfigError, match="do not fit"):
            OutputSpaceAdversary(cond, [[cond.tokens.shape[1] - 2]], config, torch.Generator())


def test_receler_binarises_attention_masks_at_its_threshold(sd):
    """With ``mask_threshold`` the regulariser sees 0/1 masks (the reference's 0.1), else the soft map."""
    from erasekit.methods.diffusion.receler import ReceleErasers, ReceleObjective
    from erasekit.training.attention import CrossAttentionProbe
    from erasekit.training.diffusion import PipeView

    adapter = get_adapter(sd)
    seen = {}
    for thr in (0.0, 0.5):
        config = get_method("receler").make_config(
            {"iterations": 1, "adv_every": 0, "ddim_steps": 3, "rank": 4, "mask_threshold": thr}
        )
        with Workbench(sd, adapter, ["unet"]) as bench:
            erasers = ReceleErasers.build(bench.student["unet"], "unet", 4)
            handles = erasers.install(PipeView(sd, bench.student))
            maps = CrossAttentionProbe(bench.student["unet"])
            handles += maps.install()
            objective = ReceleObjective(bench, erasers, maps, ["a cat"], ["cat"], config)
            import erasekit.methods.diffusion.receler as receler_module

            real = receler_module._masked_energy
            receler_module._masked_energy = lambda outs, masks: seen.setdefault(thr, masks) and real(outs, masks)
            try:
                objective.loss(0, step_generator(0, 0))
            finally:
                receler_module._masked_energy = real
            for h in handles:
                h.remove()
    assert all(set(torch.unique(m).tolist()) <= {0.0, 1.0} for m in seen[0.5])
    assert any(len(torch.unique(m)) > 2 for m in seen[0.0])


@pytest.mark.parametrize(
    "kind, name, params, message",
    [
        ("method", "receler", {"adv_space": "embedding", "adv_weight_decay": 0.0}, "applies to adv_space=output"),
        ("method", "receler", {"filler": "the"}, "applies to adv_space=embedding"),
        ("method", "spm", {"anchors": "vocabulary", "anchor_batch": 2}, "anchor_batch applies"),
        ("method", "spm", {"n_anchors": 8}, "apply to anchors=vocabulary"),
        ("method", "ant", {"mask_ratio": 1.0, "mask_side": "top"}, "mask_ratio=1 has none"),
        ("method", "mace", {"attention_loss": "cubed"}, "norm or squared"),
        ("method", "advunlearn", {"retain_set": "coco"}, "objects or empty"),
        ("attack", "soft-prompt", {"point": "image", "ddim_steps": 20}, "apply to point=trajectory"),
        ("attack", "soft-prompt", {"init": "zeros"}, "random or placeholder"),
    ],
)
def test_options_that_do_not_apply_are_refused(kind, name, params, message):
    from erasekit.core.registry import get_attack

    spec = get_method(name) if kind == "method" else get_attack(name)
    with pytest.raises(ConfigError, match=message):
        spec.make_config(params)
