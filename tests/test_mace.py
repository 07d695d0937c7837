"""MACE: closed-form fusion is the minimiser, LoRAs lower the masked attention, testbed masks are exact."""

from __future__ import annotations

import numpy as np
import torch

from erasekit import api
from erasekit.methods.diffusion.mace import fuse
from erasekit.models.diffusion import get_adapter
from erasekit.testbeds.image.exact import concept_renders
from erasekit.testing import tiny_pipeline


def test_fusion_is_the_minimiser_and_reproduces_each_lora_on_its_keys():
    gen = torch.Generator().manual_seed(0)
    d, o = 16, 8
    w = torch.randn(o, d, generator=gen, dtype=torch.float64)
    keys = [torch.randn(3, d, generator=gen, dtype=torch.float64), torch.randn(2, d, generator=gen, dtype=torch.float64)]
    deltas = [
        torch.randn(o, 1, generator=gen, dtype=torch.float64) @ torch.randn(1, d, generator=gen, dtype=torch.float64)
        for _ in keys
    ]
    preserve = torch.randn(4, d, generator=gen, dtype=torch.float64)
    gamma, ridge = 0.5, 1e-3
    fused = fuse(w, deltas, keys, preserve, gamma, ridge)
    grad = ridge * (fused - w) + gamma * (fused - w) @ preserve.t() @ preserve
    for delta, e in zip(deltas, keys):
        grad += (fused - w - delta) @ e.t() @ e
    assert grad.abs().max() < 1e-8
    single = fuse(w, deltas[:1], keys[:1], preserve[:0], 0.0, 1e-8)
    assert torch.allclose(single @ keys[0].t(), (w + deltas[0]) @ keys[0].t(), atol=1e-5)
    orth = torch.linalg.svd(keys[0], full_matrices=True).Vh[3:]  # directions no concept key touches
    assert torch.allclose(single @ orth.t(), w @ orth.t(), atol=1e-5)


def test_world_concept_images_have_exact_masks():
    images, masks = concept_renders("star", 6, seed=0)
    assert images.shape == (6, 32, 32, 3) and masks.shape == (6, 32, 32)
    assert ((masks > 0) & (masks < 1)).any() and masks.max() == 1.0  # anti-aliased silhouettes
    _, bg = concept_renders("white", 4, seed=0)
    assert bg.mean() > 0.5  # the background is most of the image
    _, wm = concept_renders("watermark", 2, seed=0)
    assert int(wm[0].sum()) == 25


def test_mace_end_to_end_on_a_tiny_model():
    pipe = tiny_pipeline("sd")
    adapter = get_adapter(pipe)
    request = {"targets": [{"concept": "cat"}, {"concept": "dog"}], "preserve": ["bird"]}
    erasure = api.erase(pipe, "mace", request, progress=False, iterations=4, n_images=2, sample_steps=2, lr=1e-2)
    kv = set(adapter.parameter_set(pipe, "xattn-kv"))
    assert erasure.weights and set(erasure.weights) <= kv
    for c in erasure.info["concepts"]:
        t = c["training"]
        assert t["final_loss"]["attention"] < t["initial_loss"]["attention"]  # the LoRA lowers the masked attention
    assert all(n > 0 for n in erasure.info["lora_delta_norms"])
    assert np.isfinite([float(v.abs().max()) for v in erasure.weights.values()]).all()


def test_cfr_aligns_the_tokens_around_the_concept_and_leaves_the_concept_out():
    from erasekit.methods.diffusion.mace import context_alignment

    # BOS a photo of STAR EOS  vs  BOS a photo of EOS   (ids are arbitrary; 9 = the concept)
    old, new = [0, 1, 2, 3, 9, 99], [0, 1, 2, 3, 99]
    o, n = context_alignment(old, new, 8)
    assert 4 not in o  # the concept's own token is not edited
    assert o[:4] == n[:4] == [0, 1, 2, 3] and (o[4], n[4]) == (5, 4)  # prefix, then EOS to EOS
    assert len(o) == len(n) and o[-1] <= 7 and n[-1] <= 7  # the padding continues, paired
    # a longer mapping concept: the new side skips more
    o, n = context_alignment([0, 9, 99], [0, 7, 8, 99], 6)
    assert o[:2] == [0, 2] and n[:2] == [0, 3] and len(o) == len(n)


def test_cfr_maps_the_context_keys_and_the_loss_covers_the_end_token():
    from erasekit.core.request import ErasureRequest
    from erasekit.methods.diffusion.mace import MACEConfig, closed_form_refinement, context_alignment, loss_positions

    pipe = tiny_pipeline("sd")
    adapter = get_adapter(pipe)
    request = ErasureRequest.from_dict({"targets": ["cat"]})
    weights, info = closed_form_refinement(pipe, adapter, request, MACEConfig(lamb=1e-4, preserve_scale=0.0))
    assert info["pairs"] == 4  # the concept alone and three augmented prompts
    tok = pipe.tokenizer
    enc = adapter.encode(pipe, ["a photo of cat", "a photo of"])
    o, n = context_alignment(tok("a photo of cat").input_ids, tok("a photo of").input_ids, enc.tokens.shape[1])
    c, g = enc.tokens[0, o].double(), enc.tokens[1, n].double()  # the context keys and their partners
    assert not torch.equal(c, g)
    for proj in adapter.text_projections(pipe):
        w0, w1 = proj.module.weight.detach().double(), weights[proj.weight_key].double()
        # the context's values move toward the mapping prompt's (a least-squares fit over every pair)
        assert (c @ w1.T - g @ w0.T).norm() < 0.9 * (c @ w0.T - g @ w0.T).norm(), proj.path
    positions = loss_positions(tok, "a photo of cat", "cat", use_pooler=True)
    ids = tok("a photo of cat", padding="max_length", max_length=tok.model_max_length).input_ids
    own = loss_positions(tok, "a photo of cat", "cat", use_pooler=False)
    assert own and set(own) < set(positions) and ids.index(tok.eos_token_id) in positions
    assert all(ids[i] == tok.eos_token_id for i in set(positions) - set(own))


def test_attention_loss_is_the_released_attn_controller_loss():
    """The probe's loss equals MACE's AttnController.loss (cfr_utils.py, verbatim formula) on fixed inputs:
    every head, the mask resized by nearest neighbour and > 0.5, the chosen tokens, unsquared norm per layer."""
    import torch.nn.functional as F
    from diffusers.models.attention_processor import Attention

    from erasekit.training.attention import CrossAttentionProbe

    torch.manual_seed(0)
    net = torch.nn.Module()
    net.attn2 = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    h, enc = torch.randn(1, 16, 8), torch.randn(1, 5, 6)  # a 4 x 4 layer, 5 tokens
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:6, 1:5] = 1.0
    positions = [1, 3, 4]
    probe = CrossAttentionProbe(net)
    handles = probe.install()
    probe.reset([positions], mask)
    net.attn2(h, encoder_hidden_states=enc)
    for hd in handles:
        hd.remove()
    a = net.attn2
    probs = a.get_attention_scores(a.head_to_batch_dim(a.to_q(h)), a.head_to_batch_dim(a.to_k(enc)))  # [heads, HW, T]
    d = int(probs.shape[1] ** 0.5)
    resized = (F.interpolate(mask[None], size=(d, d), mode="nearest") > 0.5).view(-1)
    chosen = torch.zeros(5, dtype=torch.bool)
    chosen[positions] = True
    reference = torch.norm(probs[:, resized, :][:, :, chosen])
    assert torch.allclose(probe.loss, reference, atol=1e-6)
    squared = CrossAttentionProbe(net, "squared")
    handles = squared.install()
    squared.reset([positions], mask)
    net.attn2(h, encoder_hidden_states=enc)
    for hd in handles:
        hd.remove()
    assert not torch.allclose(squared.loss, reference)  # the earlier form differs


def test_fusion_ridge_defaults_to_the_refinement_lambda():
    from erasekit.core.registry import get_method

    assert get_method("mace").make_config({"lamb": 300.0}).ridge == 300.0  # as released: one λ
    assert get_method("mace").make_config({"lamb": 300.0, "fuse_ridge": 1e-3}).ridge == 1e-3
