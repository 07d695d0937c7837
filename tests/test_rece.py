"""RECE: the adversarial embedding is the least-squares preimage, and re-erasing it neutralises it."""

import numpy as np
import pytest
import torch

from erasekit.api import erase
from erasekit.core.request import ErasureRequest, Target
from erasekit.methods.diffusion.rece import adversarial_embedding
from erasekit.models.diffusion import get_adapter
from erasekit.testing import tiny_pipeline


def test_adversarial_embedding_is_the_regularised_preimage():
    g = torch.Generator().manual_seed(0)
    original = [torch.randn(12, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    edited = [w + 0.3 * torch.randn(12, 8, generator=g, dtype=torch.float64) for w in original]
    c = torch.randn(5, 8, generator=g, dtype=torch.float64)
    adv = adversarial_embedding(edited, original, c, reg=1e-3).requires_grad_(True)
    loss = sum((adv @ w1.T - c @ w0.T).pow(2).sum() for w1, w0 in zip(edited, original)) + 1e-3 * adv.pow(2).sum()
    loss.backward()
    assert adv.grad.norm() < 1e-8
    # with no edit the concept is its own preimage
    same = adversarial_embedding(original, original, c, reg=0.0)
    assert torch.allclose(same, c, atol=1e-8)


def test_rece_re_erases_what_uce_left_reachable():
    pipe = tiny_pipeline("sd")
    request = ErasureRequest([Target("star")], preserve=["circle"])
    base = erase(pipe, "uce", request)
    rece = erase(pipe, "rece", request, epochs=2)
    assert rece.info["chosen_epoch"] == 2 and set(rece.weights) == set(base.weights)
    assert any(not torch.equal(rece.weights[k], base.weights[k]) for k in base.weights)

    adapter = get_adapter(pipe)
    projections = [p for p in adapter.text_projections(pipe) if p.weight_key in base.weights]
    originals = [p.module.weight.detach() for p in projections]
    enc = adapter.encode(pipe, ["star", " "])
    c, guide = enc.tokens[0].double(), enc.tokens[1].double()
    uce_w = [base.weights[p.weight_key].double() for p in projections]
    adv = adversarial_embedding(uce_w, originals, c, reg=1e-3)

    def distance_to_guide(weights):
        return sum((adv @ w.T - guide @ u.T).norm() for w, u in zip(weights, uce_w))

    rece_w = [rece.weights[p.weight_key].double() for p in projections]
    assert distance_to_guide(rece_w) < 0.8 * distance_to_guide(uce_w)


class CountingJudge:
    """Says the concept is shown in every image except during the second call (so epoch 2 wins)."""

    def __init__(self):
        self.calls = 0

    def shows(self, images, concept):
        self.calls += 1
        return np.full(len(images), self.calls != 2)


def test_judge_picks_the_epoch_that_shows_the_concept_least():
    pipe = tiny_pipeline("sd")
    judge = CountingJudge()
    before = {p.weight_key: p.module.weight.detach().clone() for p in get_adapter(pipe).text_projections(pipe)}
    result = erase(pipe, "rece", ErasureRequest([Target("star")]), judge=judge, epochs=3, validation_seeds=2)
    assert judge.calls == 3 and result.info["chosen_epoch"] == 2
    assert result.info["validation_shown_rate"] == [1.0, 0.0, 1.0]
    # validation put weights in temporarily; the pipeline is back to its original weights
    for p in get_adapter(pipe).text_projections(pipe):
        assert torch.equal(p.module.weight, before[p.weight_key])


def test_rece_starts_from_the_2023_uce_and_preserves_the_empty_prompt():
    pipe = tiny_pipeline("sd")
    request = ErasureRequest([Target("star", anchor="a shape")])
    result = erase(pipe, "rece", request)
    assert result.info["uce"]["variant"] == "2023" and result.info["uce"]["preserve_empty"]
    adapter = get_adapter(pipe)
    enc = adapter.encode(pipe, ["", "star"])
    empty, star = enc.tokens[0].double(), enc.last_word_vectors()[1].double()
    for proj in adapter.text_projections(pipe):
        w0, w1 = proj.module.weight.detach().double(), result.weights[proj.weight_key].double()
        kept = ((w1 - w0) @ empty.T).norm() / (w0 @ empty.T).norm()
        moved = ((w1 - w0) @ star).norm() / (w0 @ star).norm()
        assert kept < 0.5 * moved, proj.path
    without = erase(pipe, "rece", request, preserve_empty=False, uce_variant="current")
    assert without.info["uce"]["variant"] == "current"
    assert any(not torch.equal(without.weights[k], result.weights[k]) for k in result.weights)


@pytest.mark.testbed
def test_rece_re_erasure_equals_the_reference_update(testbed_pipe):
    """One epoch of ``edit_model_adversarial`` (technique 'replace', the scripts' default) written out:
    from RECE's UCE start W′, every token of the adversarial embedding maps to the guide " "'s values,
    every token of "" and the preserved prompts keeps its values: W″ = (λW′ + η_e Σ W′g cᵀ + η_p Σ W′r rᵀ)
    (λI + η_e Σ c cᵀ + η_p Σ r rᵀ)⁻¹, λ 0.1, η_e 1, η_p 0.1."""
    from erasekit.core.erasure import get_tensor

    pipe = testbed_pipe
    tok, te = pipe.tokenizer, pipe.text_encoder

    def tokens(prompt: str) -> torch.Tensor:
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        with torch.no_grad():
            return te(ids.input_ids).last_hidden_state[0].double()

    request = ErasureRequest([Target("star")], preserve=["circle"])
    start = erase(pipe, "uce", request, variant="2023", preserve_empty=True).weights
    ours = erase(pipe, "rece", request, epochs=1, judge=None).weights
    keys = sorted(start)
    originals = [get_tensor(pipe, k).detach().double() for k in keys]
    adv = adversarial_embedding([start[k].double() for k in keys], originals, tokens("star"), reg=1e-3)
    guide, retained = tokens(" "), [tokens(""), tokens("circle")]
    for k in keys:
        w = start[k].double()
        mat1 = 0.1 * w + (w @ guide.T) @ adv
        mat2 = 0.1 * torch.eye(w.shape[1], dtype=torch.float64) + adv.T @ adv
        for r in retained:
            mat1 += 0.1 * (w @ r.T) @ r
            mat2 += 0.1 * r.T @ r
        expected = mat1 @ torch.linalg.inv(mat2)
        assert (ours[k].double() - expected).abs().max() <= 1e-4 * expected.abs().max(), k
