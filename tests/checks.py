"""Assertions shared by the training-method tests."""

from __future__ import annotations

import torch

from erasekit.core.erasure import hash_tensors
from erasekit.training import step_generator


def state_hash(module: torch.nn.Module) -> str:
    return hash_tensors(dict(module.state_dict()))


def _nonzero_grads(objective, params: dict) -> dict[str, bool]:
    terms = objective.loss(0, step_generator(0, 0))
    plist = list(params.values())
    out = {}
    for name, term in terms.items():
        assert term.requires_grad, f"loss term {name!r} is computed without gradient"
        grads = torch.autograd.grad(term, plist, retain_graph=True, allow_unused=True)
        out[name] = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    return out


def assert_terms_have_gradient(objective, params: dict) -> None:
    """Every named loss term of step 0 has a non-zero gradient on some trainable parameter.

    Preservation terms whose target is the frozen model (retain, anchoring, unconditional
    preservation) sit exactly at their minimum at step 0, where their gradient is zero by
    construction; for those the check is repeated after a small random move of the parameters
    (restored afterwards). A term computed under ``no_grad`` fails either way.
    """
    first = _nonzero_grads(objective, params)
    if all(first.values()):
        return
    saved = {k: p.detach().clone() for k, p in params.items()}
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in params.values():
            p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p) * (p.abs().mean() + 1e-2))
    try:
        second = _nonzero_grads(objective, params)
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])
    dead = [name for name in first if not (first[name] or second.get(name, False))]
    assert not dead, f"loss terms without gradient: {dead}"
