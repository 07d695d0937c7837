"""The shared ridge solve: exact against the straightforward formula, and optimal (zero gradient)."""

import pytest
import torch

from erasekit.core.errors import SingularSystemError
from erasekit.methods.diffusion.closed_form import ridge_edit_reference, ridge_gain, ridge_objective


def _data(n_e=5, n_p=7, d=24, out=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out, d, generator=g, dtype=torch.float64), torch.randn(n_e, d, generator=g, dtype=torch.float64),
            torch.randn(n_e, d, generator=g, dtype=torch.float64), torch.randn(n_p, d, generator=g, dtype=torch.float64))  # fmt: skip


@pytest.mark.parametrize("solver", ["direct", "woodbury"])
@pytest.mark.parametrize("lam,eta_e,eta_p", [(0.5, 1.0, 1.0), (0.1, 2.0, 0.3), (1e-3, 1.0, 0.1)])
def test_low_rank_edit_equals_the_straightforward_formula(solver, lam, eta_e, eta_p):
    w, ce, cg, cp = _data()
    new = ridge_gain(ce, cg, cp, lam, eta_e, eta_p, solver=solver).edit(w)
    ref = ridge_edit_reference(w, ce, cg, cp, lam, eta_e, eta_p)
    assert torch.allclose(new, ref, rtol=1e-9, atol=1e-9)


def test_gradient_of_the_objective_vanishes_at_the_solution():
    w, ce, cg, cp = _data(n_e=30, n_p=40)  # more keys than dimensions: the direct solver
    new = ridge_gain(ce, cg, cp, 0.5).edit(w).clone().requires_grad_(True)
    ridge_objective(new, w, ce, cg, cp, 0.5).backward()
    perturbed = (new.detach() + 1e-3 * torch.randn_like(w)).requires_grad_(True)
    ridge_objective(perturbed, w, ce, cg, cp, 0.5).backward()
    assert new.grad.norm() < 1e-8 * perturbed.grad.norm() * 1e6 and new.grad.norm() < 1e-6
    assert perturbed.grad.norm() > 1e-3


def test_targets_map_to_guides_and_preserved_keys_stay():
    w, ce, cg, cp = _data(n_e=3, n_p=4, d=32)
    new = ridge_gain(ce, cg, cp, lam=1e-6).edit(w)
    assert torch.allclose(new @ ce.T, w @ cg.T, rtol=1e-4, atol=1e-4)
    assert torch.allclose(new @ cp.T, w @ cp.T, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(new, w)


def test_singular_system_is_a_clear_error():
    w, ce, cg, _ = _data(n_e=2, d=8)
    with pytest.raises(SingularSystemError, match="lamb"):
        ridge_gain(ce, cg, torch.zeros(0, 8, dtype=torch.float64), lam=0.0, solver="direct")
