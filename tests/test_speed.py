"""SPEED: retained keys and invariants are untouched (null space), targets move towards their anchor."""

import pytest
import torch

from erasekit.api import erase
from erasekit.core.request import ErasureRequest, Target
from erasekit.methods.diffusion.speed import kmeans, null_space_projector, speed_delta
from erasekit.models.diffusion import get_adapter
from erasekit.testing import tiny_pipeline


def test_delta_vanishes_on_retained_keys_and_invariants():
    g = torch.Generator().manual_seed(0)
    d = 16
    w = torch.randn(10, d, generator=g, dtype=torch.float64)
    c_t = torch.randn(3, d, generator=g, dtype=torch.float64)
    c_a = torch.randn(3, d, generator=g, dtype=torch.float64)
    retain = torch.randn(5, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    k2 = torch.randn(d, 2, generator=g, dtype=torch.float64)
    p = null_space_projector(retain, tau=1e-6)
    assert torch.allclose(p @ retain.T, torch.zeros_like(retain.T), atol=1e-8)
    delta = speed_delta(w, c_t.T @ c_t / 3, c_a.T @ c_t / 3, p, k2, alpha=1.0, lam=0.0)
    assert (delta @ retain.T).norm() < 1e-8 * delta.norm() * retain.norm()
    assert (delta @ k2).norm() < 1e-8 * delta.norm() * k2.norm()
    assert delta.norm() > 1e-3


def test_kmeans_finds_separated_clusters():
    x = torch.cat([torch.zeros(5, 2), torch.full((5, 2), 10.0), torch.tensor([[0.0, 10.0]] * 4)]).double()
    c = kmeans(x, 3)
    assert sorted(map(tuple, c.round().tolist())) == [(0.0, 0.0), (0.0, 10.0), (10.0, 10.0)]


def test_speed_on_a_model_keeps_preserved_values_and_moves_the_target():
    pipe = tiny_pipeline("sd")
    request = ErasureRequest([Target("star", anchor="a shape")], preserve=["circle", "heart", "square"])
    result = erase(pipe, "speed", request, tau=1e-3, augment=0, ipf=False)
    assert result.weights and all(k.endswith("to_v.weight") for k in result.weights)
    adapter = get_adapter(pipe)
    enc = adapter.encode(pipe, ["star", "a shape", "circle", "heart", "square", ""])
    keys = enc.last_word_vectors().double()
    bos = enc.tokens[5, 0].double()
    for proj in adapter.text_projections(pipe):
        if proj.weight_key not in result.weights:
            continue
        w0, w1 = proj.module.weight.detach().double(), result.weights[proj.weight_key].double()
        moved = (w1 - w0) @ keys[2:5].T
        assert moved.norm() < 1e-3 * (w0 @ keys[2:5].T).norm(), proj.path  # preserved values kept
        assert ((w1 - w0) @ bos).norm() < 1e-6 * (w0 @ bos).norm()  # the invariant BOS is untouched
        before = (w0 @ keys[0] - w0 @ keys[1]).norm()
        after = (w1 @ keys[0] - w0 @ keys[1]).norm()
        assert after < before  # the target's value moved towards the anchor's


def test_directed_augmentations_move_keys_only_along_the_weakest_direction():
    from erasekit.methods.diffusion.speed import directed_augmentations

    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 12, generator=g, dtype=torch.float64)
    r = torch.randn(5, 12, generator=g, dtype=torch.float64)
    naive = torch.randn(6, 12, generator=g, dtype=torch.float64)
    aug = directed_augmentations(r, w, naive, copies=4, gen=torch.Generator().manual_seed(0))
    v = torch.linalg.svd(w, full_matrices=False).Vh[-1]
    assert 0 < len(aug) < 4 * len(r)  # the filter keeps those moved more than the mean
    # each kept key is one of r plus a multiple of v
    residual = torch.stack([min(((a - x) - ((a - x) @ v) * v).norm() for x in r) for a in aug])
    assert residual.max() < 1e-10
    moved = (aug @ naive.T).norm(dim=1)
    assert moved.min() > 0


def test_without_preserved_concepts_the_empty_prompts_tokens_are_retained():
    """The reference's default retained text is "": its tokens after BOS form the retained set."""
    pipe = tiny_pipeline("sd")
    result = erase(pipe, "speed", ErasureRequest([Target("star", anchor="a shape")]), tau=1e-2, augment=0)
    adapter = get_adapter(pipe)
    enc = adapter.encode(pipe, ["", "star"])
    empty = enc.tokens[0, 1:].double()  # EOS and padding of ""
    assert result.info["retain_keys_after_filter_and_augmentation"] == [len(empty)] * len(result.weights)
    star = enc.last_word_vectors()[1].double()
    for proj in adapter.text_projections(pipe):
        if proj.weight_key in result.weights:
            w0, w1 = proj.module.weight.detach().double(), result.weights[proj.weight_key].double()
            kept = ((w1 - w0) @ empty.T).norm() / (w0 @ empty.T).norm()
            moved = ((w1 - w0) @ star).norm() / (w0 @ star).norm()
            assert kept < 0.1 * moved, proj.path


@pytest.mark.testbed
def test_speed_equals_a_re_derivation_of_the_reference_update(testbed_pipe):
    """``train_erase_null.py``'s update written out step by step, with the tokenizer and text encoder
    used directly (augmentation off, as ``--aug_num 0``; IEC with the BOS key only, as k-means inits differ)."""
    pipe = testbed_pipe
    tok, te = pipe.tokenizer, pipe.text_encoder

    def hidden(prompt: str):
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        with torch.no_grad():
            return te(ids.input_ids).last_hidden_state[0].double(), int(ids.attention_mask[0].sum())

    def last_subject(prompt: str) -> torch.Tensor:
        h, n = hidden(prompt)
        return h[[n - 2]]  # [1, d]

    t, a = last_subject("star"), last_subject("a shape")
    sum_tt, sum_at = t.T @ t, a.T @ t
    ret = torch.cat([last_subject(p) for p in ("circle", "heart")])
    sum_rr = ret.T @ ret / len(ret)
    u, s, _ = torch.linalg.svd(sum_rr)
    p = u[:, s < 0.1] @ u[:, s < 0.1].T
    d = t.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    m = torch.linalg.inv(sum_tt @ p + 1.0 * eye)
    k2 = hidden("")[0][[0]].T  # BOS of ""
    inner = eye - m @ k2 @ torch.linalg.inv(k2.T @ p @ m @ k2) @ k2.T @ p

    request = ErasureRequest([Target("star", anchor="a shape")], preserve=["circle", "heart"])
    ours = erase(pipe, "speed", request, augment=0, invariant_centroids=0)
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn2.to_v"):
            w = module.weight.detach().double()
            expected = w + w @ (sum_at - sum_tt) @ p @ inner @ m
            got = ours.weights[f"unet.{name}.weight"].double()
            assert (got - expected).abs().max() <= 1e-4 * expected.abs().max(), name


def test_invariant_centroids_cluster_the_empty_prompts_eos_and_padding(monkeypatch):
    """The reference's K2: BOS of "" plus k-means centroids of ``null_hidden[1:]`` (EOS and padding)."""
    import erasekit.methods.diffusion.speed as speed_module

    seen = []
    real = speed_module.kmeans

    def spy(x, k, iters=25):
        seen.append(x.clone())
        return real(x, k, iters)

    monkeypatch.setattr(speed_module, "kmeans", spy)
    pipe = tiny_pipeline("sd")
    erase(pipe, "speed", ErasureRequest([Target("star", anchor="a shape")]), tau=1e-2, augment=0)
    empty = get_adapter(pipe).encode(pipe, [""]).tokens[0].double()
    assert len(seen) == 1 and torch.allclose(seen[0], empty[1:])  # EOS included, BOS not
