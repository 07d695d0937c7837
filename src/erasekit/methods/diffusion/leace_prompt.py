"""LEACE on the prompt embeddings — LEAst-squares Concept Erasure (Belrose et al., NeurIPS 2023;
EleutherAI/concept-erasure 0.2.4) of "this prompt names the concept" from the text encoder's output,
as a guard: no weight changes, every conditioning the UNet reads passes through the eraser.

Fitted in closed form (float64) on the token states ``x`` (every position of the text encoder's
output, as the UNet reads them) of *target* prompts (each phrase of each target, bare and in the
templates; ``z`` = one-hot of its target) and *neutral* prompts (the model's retain objects —
COCO's categories, the testbed's shapes and characters — and the anchors; ``z`` = 0). With the
package's defaults (``LeaceFitter(method="leace")``):

    Σ_xx = optimal linear shrinkage of the sample covariance (Ledoit–Wolf-type, towards tr(Σ)/d · I)
    W    = Σ_xx^{-1/2} on the eigenvalues above λ_max · d · ε (a pseudo-inverse), W⁺ = Σ_xx^{1/2}
    U    = left singular vectors of W Σ_xz whose singular values exceed ``svd_tol`` (0.01)
    P    = I − W⁺ U Uᵀ W,   x' = x − W⁺ U Uᵀ W (x − μ)

after which no linear classifier of ``x'`` predicts ``z`` better than a constant one. The package's
``constrain_cov_trace`` (blend with an orthogonal projection when ``P`` would raise the covariance's
trace) is not carried: for this ``P``, ``P Σ Pᵀ = Σ^{1/2} (I − U Uᵀ) Σ^{1/2}``, whose trace is never
above ``tr Σ``, so the branch cannot fire. Tested equal to ``concept_erasure.LeaceFitter`` on the
same states (≤ 1e-5). Installed as a forward hook on the layer whose output the UNet reads (SD 1.x/2.x: CLIP's
final layer norm); SDXL, SD3 and Flux read other states and are not supported yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.core.attachments import Attachment, find_module, get_module, register_attachment
from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult, register_method
from erasekit.core.request import ErasureRequest
from erasekit.methods.diffusion.closed_form import PROMPT_AUGMENTATIONS, augmented_prompts


def read_layer(pipe) -> str:
    """The path of the module whose output the UNet reads (SD: CLIP's final layer norm)."""
    return find_module(pipe, "text_encoder", "final_layer_norm", "leace-prompt")


@dataclass
class LEACEPromptConfig(MethodConfig):
    svd_tol: float = field(default=0.01, metadata={"help": "singular values of W Σ_xz kept above this (the package's)"})
    shrinkage: bool = field(default=True, metadata={"help": "shrink the covariance (the package's default)"})


def optimal_linear_shrinkage(s: torch.Tensor, n: int) -> torch.Tensor:
    """``α S + β tr(S)/p · I`` with the distribution-free optimal ``α, β`` (arXiv 1308.2608; the package's)."""
    p = s.shape[-1]
    sigma0 = torch.eye(p, dtype=s.dtype, device=s.device) * torch.trace(s) / p
    sigma0_sq, s_sq = sigma0.norm() ** 2, s.norm() ** 2
    prod = torch.trace(s @ sigma0)
    eps = torch.finfo(s.dtype).eps
    alpha = 1 - (torch.trace(s) ** 2 * sigma0_sq / n + eps) / (s_sq * sigma0_sq - prod**2 + eps)
    beta = (1 - alpha) * (prod + eps) / (sigma0_sq + eps)
    return alpha * s + beta * sigma0


def fit_leace(x: torch.Tensor, z: torch.Tensor, svd_tol: float = 0.01, shrinkage: bool = True) -> dict[str, torch.Tensor]:
    """``{"left" [d, k], "right" [k, d], "bias" [d]}`` of the LEACE eraser of labels ``z [n, k]`` from
    states ``x [n, d]`` (float64): ``x' = x − ((x − bias) rightᵀ) leftᵀ`` (module docstring)."""
    x, z = x.double(), z.double().reshape(len(x), -1)
    n, d = x.shape
    mu = x.mean(0)
    xc, zc = x - mu, z - z.mean(0)
    s = xc.T @ xc
    s = (s + s.T) / 2
    sigma = optimal_linear_shrinkage(s / n, n) if shrinkage else s / (n - 1)
    vals, vecs = torch.linalg.eigh(sigma)
    keep = vals > vals[-1] * d * torch.finfo(vals.dtype).eps
    vals = vals.clamp_min(0.0)
    w = vecs * torch.where(keep, vals.rsqrt(), 0.0) @ vecs.T
    w_inv = vecs * torch.where(keep, vals.sqrt(), 0.0) @ vecs.T
    u, sv, _ = torch.linalg.svd(w @ (xc.T @ zc / (n - 1)), full_matrices=False)
    u = u * (sv > svd_tol)
    left, right = w_inv @ u, u.T @ w
    return {"left": left, "right": right, "bias": mu}


def erase_states(x: torch.Tensor, eraser: dict[str, torch.Tensor]) -> torch.Tensor:
    """``x − ((x − bias) rightᵀ) leftᵀ`` in float32 on ``x``'s device, returned in ``x``'s dtype."""
    e = {k: v.to(x.device, torch.float32) for k, v in eraser.items()}
    xf = x.float()
    return (xf - ((xf - e["bias"]) @ e["right"].T) @ e["left"].T).to(x.dtype)


@register_attachment
class LEACEPromptGuard(Attachment):
    """A LEACE eraser on the output of the module ``path`` (forward hook)."""

    kind = "leace-prompt"

    def __init__(self, path: str, eraser: dict[str, torch.Tensor]) -> None:
        self.path, self.eraser = path, eraser

    def install(self, pipe) -> list:
        module = get_module(pipe, self.path)
        return [module.register_forward_hook(lambda _m, _i, out: erase_states(out, self.eraser))]

    def config(self) -> dict:
        return {"path": self.path}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.float().contiguous() for k, v in self.eraser.items()}

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "LEACEPromptGuard":
        return cls(str(config["path"]), {k: tensors[k] for k in ("left", "right", "bias")})


def fit_prompts(request: ErasureRequest, neutral: list[str]) -> tuple[list[str], torch.Tensor]:
    """The fitting prompts and their labels ``[n, k]``: every phrase of target ``k`` bare and in the
    request's templates (default: "a photo of {}", "an image of {}", "a picture of {}"), then the
    neutral prompts and the anchors' (label 0)."""
    pairs = augmented_prompts(request)
    prompts, labels = [p for _, p in pairs], [k for k, _ in pairs]
    templates = list(request.templates) or list(PROMPT_AUGMENTATIONS)
    anchors = [tpl.format(t.anchor) for t in request.targets if t.anchor for tpl in ("{}", *templates)]
    others = [*neutral, *anchors, *request.preserve_prompts()]
    z = torch.zeros(len(prompts) + len(others), len(request.targets))
    z[torch.arange(len(prompts)), torch.tensor(labels)] = 1.0
    return prompts + others, z


@register_method("leace-prompt", LEACEPromptConfig, families=("sd",), kind="guard", accepts=("profile",))
def leace_prompt(pipe, request: ErasureRequest, config: LEACEPromptConfig, adapter, progress: bool = True,
                 profile=None) -> MethodResult:  # fmt: skip
    """Guard: LEACE on the prompt embeddings, the concept made linearly unreadable (no weight changes)."""
    neutral = profile.retain_prompts(avoid=tuple(request.concepts)) if profile is not None else []
    prompts, z = fit_prompts(request, neutral)
    if not z.sum(1).eq(0).any():
        raise ConfigError("leace-prompt needs neutral prompts (the model's retain objects, an --anchor or --preserve)")
    with torch.no_grad():
        states = adapter.conditioning(pipe, prompts).tokens  # [n, T, d]: what the UNet reads
    x = states.reshape(-1, states.shape[-1])
    zz = z.repeat_interleave(states.shape[1], dim=0)
    eraser = fit_leace(x, zz, config.svd_tol, config.shrinkage)
    rank = int((eraser["left"].norm(dim=0) > 0).sum())
    guard = LEACEPromptGuard(read_layer(pipe), {k: v.float() for k, v in eraser.items()})
    return MethodResult({}, {"fit_prompts": len(prompts), "fit_tokens": len(x), "rank": rank}, attachment=guard)
