"""TIME: its token alignment, and stationarity of its objective at the edited weights."""

import pytest
import torch

from erasekit.api import erase
from erasekit.core.errors import UnsupportedModelError
from erasekit.core.request import ErasureRequest, Target
from erasekit.methods.diffusion.closed_form import ridge_objective
from erasekit.methods.diffusion.time import align, erasure_alignment, greedy_alignment
from erasekit.models.diffusion import get_adapter
from erasekit.testing import tiny_pipeline


def test_greedy_alignment_is_times_rule():
    # "a pack of roses" -> "a pack of blue roses": BOS a pack of [blue] roses EOS
    src, dst = [0, 1, 2, 3, 5, 9], [0, 1, 2, 3, 4, 5, 9]
    assert greedy_alignment(src, dst, 10) == [0, 1, 2, 3, 5, 6, 7, 8, 9, 9]
    assert greedy_alignment([0, 7, 9], [0, 1, 9], 5) is None


def test_erasure_alignment_maps_the_concept_onto_the_anchor():
    # BOS a star EOS -> BOS a shape EOS
    assert erasure_alignment([0, 1, 7, 9], [0, 1, 8, 9], 6) == [0, 1, 2, 3, 4, 5]
    # BOS star EOS -> BOS EOS: the concept goes to BOS, EOS to EOS, padding follows
    assert erasure_alignment([0, 7, 9], [0, 9], 5) == [0, 0, 1, 2, 3]
    # two-token concept onto a one-token anchor: right-aligned, clamped
    assert erasure_alignment([0, 6, 7, 9], [0, 8, 9], 6) == [0, 1, 1, 2, 3, 4]
    assert align([0, 1, 7, 9], [0, 1, 8, 9], 6) == [0, 1, 2, 3, 4, 5]


def test_time_solution_is_stationary_for_its_objective():
    pipe = tiny_pipeline("sd")
    request = ErasureRequest([Target("star", anchor="a shape")])
    result = erase(pipe, "time", request, augment=False)
    enc = get_adapter(pipe).encode(pipe, ["star", "a shape"])
    tok = pipe.tokenizer
    a = align(tok("star").input_ids, tok("a shape").input_ids, enc.tokens.shape[1])
    ce, cg = enc.tokens[0].double(), enc.tokens[1, a].double()
    empty = ce.new_zeros(0, ce.shape[1])
    for key, new in result.weights.items():
        old = pipe.unet.get_parameter(key[len("unet.") :]).detach().double()
        w = new.double().clone().requires_grad_(True)
        ridge_objective(w, old, ce, cg, empty, lam=0.1).backward()
        moved = (old.clone() + 1e-2 * torch.randn_like(old)).requires_grad_(True)
        ridge_objective(moved, old, ce, cg, empty, lam=0.1).backward()
        assert w.grad.norm() < 1e-4 * moved.grad.norm(), key
    assert all(k.endswith(("to_k.weight", "to_v.weight")) for k in result.weights)


def test_time_supports_unet_families_only():
    result = erase(tiny_pipeline("sdxl"), "time", ErasureRequest([Target("star")]))
    assert result.info["pairs"] == 4  # the prompt and TIME's three augmentations
    with pytest.raises(UnsupportedModelError, match="does not support the sd3 family"):
        erase(tiny_pipeline("sd3"), "time", ErasureRequest([Target("star")]))
