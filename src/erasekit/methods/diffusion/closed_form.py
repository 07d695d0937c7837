"""Shared math of the closed-form family: one ridge solve, reused by every projection matrix.

For a projection ``W: [out, d]`` the common objective (UCE, TIME, RECE's re-erasure) is

    min_W'  η_e Σ_i ‖W' c_i − W g_i‖² + η_p Σ_j ‖W' p_j − W p_j‖² + λ ‖W' − W‖²_F

with target keys ``C_e = [c_i]: [n_e, d]``, their guides ``C_g = [g_i]: [n_e, d]`` (row-paired) and
preserved keys ``C_p = [p_j]: [n_p, d]``. Its solution is ``W' = W B A⁻¹`` with

    A = λI + η_e C_eᵀC_e + η_p C_pᵀC_p,      B = λI + η_e C_gᵀC_e + η_p C_pᵀC_p.

Because the values are produced by the same ``W``, ``B − A = η_e (C_g − C_e)ᵀ C_e`` and

    W' = W + (W Dᵀ) G,     D = C_g − C_e,     G = η_e C_e A⁻¹   ([n_e, d]),

so ``G`` is solved **once** for all layers that read the same features, and each layer costs two thin
matrix products (``out·d·n_e``) instead of a ``d³`` solve. When ``n_e + n_p < d`` (and λ > 0) the
Woodbury identity gives ``A⁻¹C_eᵀ`` from an ``(n_e+n_p)``-sized system:

    A⁻¹ = (1/λ) [I − Xᵀ (λ S⁻¹ + X Xᵀ)⁻¹ X],   X = [C_e; C_p],  S = diag(η_e…, η_p…).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError, SingularSystemError
from erasekit.core.registry import MethodResult
from erasekit.core.request import ErasureRequest
from erasekit.models.diffusion import Encoded, FamilyAdapter

#: Prompt templates the closed-form methods expand a concept with when the request gives none (TIME's
#: augmentation; MACE's augmented prompts; every word is in the testbed's vocabulary too).
PROMPT_AUGMENTATIONS = ("a photo of {}", "an image of {}", "a picture of {}")


def augmented_prompts(request) -> list[tuple[int, str]]:
    """``(target index, prompt)`` for every phrase of every target, bare and in the request's templates
    (default :data:`PROMPT_AUGMENTATIONS`): the concept prompts the guards fit or train on."""
    templates = ["{}", *(request.templates or PROMPT_AUGMENTATIONS)]
    return [(k, tpl.format(phrase)) for k, t in enumerate(request.targets) for phrase in t.phrases() for tpl in templates]


def math_device(device: torch.device) -> torch.device:
    """Where the closed-form float64 algebra runs: the keys' own device (CUDA included), except Apple
    MPS, which has no float64, where it runs on the CPU."""
    return torch.device("cpu") if device.type == "mps" else device


def as_f64(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` detached, in float64, on ``device`` (the closed-form methods' working precision)."""
    return t.detach().to(device=device, dtype=torch.float64)


@dataclass
class RidgeGain:
    """``G = η_e C_e A⁻¹`` and ``D = C_g − C_e`` for one feature space; ``edit(W) = W + (W Dᵀ) G``."""

    gain: torch.Tensor  # [n_e, d], float64
    direction: torch.Tensor  # [n_e, d], float64
    solver: str
    _dense: torch.Tensor | None = None  # I + DᵀG, built on first use when it is the cheaper form

    def edit(self, weight: torch.Tensor) -> torch.Tensor:
        """``W + (W Dᵀ) G``; with more keys than half the width, ``W (I + Dᵀ G)`` with the d×d factor
        built once and shared by every layer is cheaper than the two thin products."""
        w = as_f64(weight, self.gain.device)
        n, d = self.gain.shape
        if 2 * n > d:
            if self._dense is None:
                self._dense = torch.eye(d, dtype=torch.float64, device=self.gain.device) + self.direction.T @ self.gain
            return (w @ self._dense).to(weight.device, weight.dtype)
        return (w + (w @ self.direction.T) @ self.gain).to(weight.device, weight.dtype)


def ridge_gain(
    targets: torch.Tensor,
    guides: torch.Tensor,
    preserve: torch.Tensor,
    lam: float,
    eta_e: float = 1.0,
    eta_p: float = 1.0,
    solver: str = "auto",
) -> RidgeGain:
    """Solve the shared part of the ridge edit (see module docstring). Inputs are ``[n, d]`` row sets."""
    dev = math_device(targets.device)
    ce, cg = as_f64(targets, dev), as_f64(guides, dev)
    cp = as_f64(preserve, dev).reshape(-1, ce.shape[1])
    if ce.shape != cg.shape:
        raise ValueError(f"targets {tuple(ce.shape)} and guides {tuple(cg.shape)} must be row-paired")
    n_e, d = ce.shape
    n = n_e + len(cp)
    if solver == "auto":
        solver = "woodbury" if (n < d and lam > 0 and eta_e > 0 and (eta_p > 0 or len(cp) == 0)) else "direct"
    if solver == "woodbury":
        if lam <= 0:
            raise SingularSystemError("the Woodbury form needs λ > 0; raise 'lamb' or use solver=direct")
        x = torch.cat([ce, cp])
        s_inv = torch.cat([torch.full((n_e,), 1.0 / eta_e, dtype=torch.float64, device=dev),
                           torch.full((len(cp),), 1.0 / max(eta_p, 1e-300), dtype=torch.float64, device=dev)])  # fmt: skip
        small = lam * torch.diag(s_inv) + x @ x.T  # [n, n]
        inner = solve_spd(small, x @ ce.T, "the (targets + preserved)-sized system")
        a_inv_ce_t = (ce.T - x.T @ inner) / lam  # [d, n_e]
    elif solver == "direct":
        a = lam * torch.eye(d, dtype=torch.float64, device=dev) + eta_e * ce.T @ ce + eta_p * cp.T @ cp
        a_inv_ce_t = solve_spd(a, ce.T, "the d×d normal equations")
    else:
        raise ValueError(f"unknown solver {solver!r}")
    return RidgeGain(gain=eta_e * a_inv_ce_t.T, direction=cg - ce, solver=solver)


def solve_spd(a: torch.Tensor, b: torch.Tensor, what: str) -> torch.Tensor:
    """Solve ``a x = b`` for symmetric positive (semi)definite ``a``; Cholesky first, LU as a fallback."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(b, chol)
    cond = torch.linalg.cond(a)
    if not torch.isfinite(cond) or cond > 1e12:
        raise SingularSystemError(
            f"{what} is singular (condition number {float(cond):.2e}); raise the ridge weight 'lamb', "
            "or add preserved concepts so the keys span the space"
        )
    return torch.linalg.solve(a, b)


def ridge_edit_reference(
    weight: torch.Tensor,
    targets: torch.Tensor,
    guides: torch.Tensor,
    preserve: torch.Tensor,
    lam: float,
    eta_e: float = 1.0,
    eta_p: float = 1.0,
) -> torch.Tensor:
    """The same edit computed the straightforward way, ``W' = (λW + η_e W C_gᵀC_e + η_p W C_pᵀC_p) A⁻¹``,
    one full solve per matrix (the reference the tests and the benchmark compare against)."""
    dev = math_device(weight.device)
    w = as_f64(weight, dev)
    ce, cg = as_f64(targets, dev), as_f64(guides, dev)
    cp = as_f64(preserve, dev).reshape(-1, ce.shape[1])
    d = w.shape[1]
    a = lam * torch.eye(d, dtype=torch.float64, device=dev) + eta_e * ce.T @ ce + eta_p * cp.T @ cp
    rhs = lam * w + eta_e * (w @ cg.T) @ ce + eta_p * (w @ cp.T) @ cp
    return torch.linalg.solve(a, rhs.T).T.to(weight.device, weight.dtype)  # A symmetric: (rhs A⁻¹)ᵀ = A⁻¹ rhsᵀ


def ridge_objective(
    new: torch.Tensor,
    old: torch.Tensor,
    targets: torch.Tensor,
    guides: torch.Tensor,
    preserve: torch.Tensor,
    lam: float,
    eta_e: float = 1.0,
    eta_p: float = 1.0,
) -> torch.Tensor:
    """The objective of the module docstring at ``W' = new`` (differentiable in ``new``)."""
    cp = preserve.reshape(-1, targets.shape[1])
    return (
        eta_e * (new @ targets.T - old @ guides.T).pow(2).sum()
        + eta_p * (new @ cp.T - old @ cp.T).pow(2).sum()
        + lam * (new - old).pow(2).sum()
    )


@dataclass
class PromptPlan:
    """Every prompt the edit needs, deduplicated, and how they pair up."""

    prompts: list[str]
    pairs: list[tuple[int, int]]  # (target prompt index, guide prompt index)
    preserve: list[int]

    @staticmethod
    def build(request: ErasureRequest, default_anchor: str, extra_preserve: tuple[str, ...] = ()) -> "PromptPlan":
        """Targets paired with their guides (one row per prompt, deduplicated) and the preserved
        prompts, plus ``extra_preserve`` (e.g. ``""``, which a request cannot name)."""
        index: dict[str, int] = {}

        def at(p: str) -> int:
            return index.setdefault(p, len(index))

        pairs = []
        for t in request.targets:
            anchor = default_anchor if t.anchor is None else t.anchor
            for phrase in t.phrases():
                for tpl in ["{}", *request.templates]:
                    pairs.append((at(tpl.format(phrase)), at(tpl.format(anchor).strip())))
        preserve = [at(p) for p in [*request.preserve_prompts(), *extra_preserve]]
        return PromptPlan(list(index), pairs, list(dict.fromkeys(preserve)))


def token_keys(enc: Encoded, plan: PromptPlan, token: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-paired target and guide keys and the preserved keys, ``[n, d]`` each, for the token stream."""
    if token == "last":
        pos = enc.last_word()  # [N, S]
        n, s = pos.shape

        def rows(idx: list[int]) -> torch.Tensor:
            if not idx:
                return enc.tokens.new_zeros(0, enc.tokens.shape[-1])
            i = torch.tensor(idx)
            return enc.tokens[i[:, None].expand(-1, s).reshape(-1), pos[i].reshape(-1)]

        return rows([a for a, _ in plan.pairs]), rows([b for _, b in plan.pairs]), rows(plan.preserve)
    # token == "end": positions from the last word to the segment end, aligned from the start; the
    # preserved prompts keep all their positions (BOS to the last padding token).
    ce, cg = [], []
    for a, b in plan.pairs:
        pa, pb = enc.end_positions(a), enc.end_positions(b)
        for seg in enc.segments:
            sa = pa[(pa >= seg.start) & (pa < seg.start + seg.length)]
            sb = pb[(pb >= seg.start) & (pb < seg.start + seg.length)]
            k = min(len(sa), len(sb))
            ce.append(enc.tokens[a, sa[:k]])
            cg.append(enc.tokens[b, sb[:k]])
    cp = [enc.tokens[j] for j in plan.preserve]  # every position of a preserved prompt, as the 2023 code's new_emb[:]
    d = enc.tokens.shape[-1]
    return torch.cat(ce), torch.cat(cg), torch.cat(cp) if cp else enc.tokens.new_zeros(0, d)


@dataclass
class UCEConfig(MethodConfig):
    lamb: float = field(default=0.5, metadata={"help": "ridge weight λ keeping W close to the original"})
    erase_scale: float = field(default=1.0, metadata={"help": "η_e, weight of the target→guide mapping"})
    preserve_scale: float | None = field(default=None, metadata={"help": "η_p (default: 1, or max(0.1, 1/|P|) for variant 2023)"})
    token: Literal["last", "end"] | None = field(
        default=None, metadata={"help": "keys per prompt: last word, or last word to end (default by variant)"}
    )
    variant: Literal["current", "2023"] = field(
        default="current", metadata={"help": "'current' reference script or the 2023 paper code"}
    )
    with_to_k: bool = field(default=True, metadata={"help": "edit to_k as well as to_v (UNet families)"})
    default_anchor: str = field(default="", metadata={"help": "guide for targets without an anchor ('' = BOS)"})
    preserve_empty: bool | None = field(
        default=None,
        metadata={"help": "also preserve the empty prompt's keys (default by variant: 2023 yes, as its code; current no)"},
    )
    solver: Literal["auto", "direct", "woodbury"] = field(
        default="auto", metadata={"help": "linear solver (auto: Woodbury when cheaper)"}
    )

    def validate(self) -> None:
        if self.lamb < 0 or self.erase_scale <= 0 or (self.preserve_scale is not None and self.preserve_scale < 0):
            raise ConfigError("uce needs lamb >= 0, erase_scale > 0 and preserve_scale >= 0")

    def resolved_preserve_empty(self) -> bool:
        return self.variant == "2023" if self.preserve_empty is None else self.preserve_empty

    def resolved_token(self) -> str:
        return self.token or ("end" if self.variant == "2023" else "last")

    def resolved_preserve_scale(self, n_preserve: int) -> float:
        if self.preserve_scale is not None:
            return self.preserve_scale
        return max(0.1, 1.0 / max(1, n_preserve)) if self.variant == "2023" else 1.0


def uce_edit(pipe, request: ErasureRequest, config: UCEConfig, adapter: FamilyAdapter) -> MethodResult:
    """UCE's edit (:mod:`erasekit.methods.diffusion.uce` states it): one ridge regression per kind of key
    the projections read, applied to each projection. Here because RECE repeats it."""
    token = config.resolved_token()
    preserve_empty = config.resolved_preserve_empty()
    plan = PromptPlan.build(request, config.default_anchor, ("",) if preserve_empty else ())
    enc = adapter.encode(pipe, plan.prompts, upto="real" if token == "last" else None)
    eta_p = config.resolved_preserve_scale(len(request.preserve) + int(preserve_empty))
    projections = [p for p in adapter.text_projections(pipe) if config.with_to_k or not p.path.endswith("to_k")]

    keys: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    if any(p.reads == "tokens" for p in projections):
        keys["tokens"] = token_keys(enc, plan, token)
    if any(p.reads == "pooled" for p in projections):
        pooled = enc.pooled
        if pooled is None:
            raise ConfigError("this model's text encoder gives no pooled features, but a projection reads them")
        keys["pooled"] = (
            pooled[[a for a, _ in plan.pairs]],
            pooled[[b for _, b in plan.pairs]],
            pooled[plan.preserve] if plan.preserve else pooled.new_zeros(0, pooled.shape[-1]),
        )
    gains = {
        kind: ridge_gain(*k, lam=config.lamb, eta_e=config.erase_scale, eta_p=eta_p, solver=config.solver)
        for kind, k in keys.items()
    }
    weights = {p.weight_key: gains[p.reads].edit(p.module.weight) for p in projections}
    info = {
        "prompts": len(plan.prompts),
        "target_keys": {k: int(v[0].shape[0]) for k, v in keys.items()},
        "preserve_keys": {k: int(v[2].shape[0]) for k, v in keys.items()},
        "solver": {k: g.solver for k, g in gains.items()},
        "token": token,
        "preserve_scale": eta_p,
    }
    return MethodResult(weights, info)
