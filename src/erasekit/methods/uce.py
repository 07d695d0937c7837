"""UCE — Unified Concept Editing (Gandikota et al., WACV 2024; rohitgandikota/unified-concept-editing).

Edits every projection that reads text features with one closed-form ridge regression
(see ``closed_form.py``):

    W' = argmin η_e Σ_i ‖W' c_i − W₀ g_i‖² + η_p Σ_j ‖W' p_j − W₀ p_j‖² + λ ‖W' − W₀‖²

c_i: keys of the target prompts, g_i: keys of their guide (anchor) prompts, p_j: preserved keys.

Defaults follow the current reference script (``trainscripts/uce_sd_erase.py``): one key per prompt,
the last word token (index ``attention_mask.sum() − 2``); λ = 0.5, η_e = 1, η_p = 1; the guide ""
(whose "last word" is the BOS token); both to_k and to_v. ``variant="2023"`` follows the paper's
code instead: the keys are the tokens from the last word to the end (EOS and padding), aligned
position by position with the guide prompt's, and η_p = max(0.1, 1/|P|).

The guide is expanded with the same template as its target prompt, the empty one included, as the
reference's ``--expand_prompts`` does (``f"image of {''}"``: the expanded target maps to the key of
the template's last word; only the unexpanded target maps to the BOS key of ``""``). Deliberate
difference: preserved concepts are expanded with the templates too (the script preserves only the
names it is given), so a template cannot pull a preserved concept along with the target. On SD3 and Flux, the edited maps are ``context_embedder`` (token keys)
and the pooled-text projection (pooled keys of the same prompts), as the reference does for Flux.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..core.config import MethodConfig
from ..core.errors import ConfigError
from ..core.registry import MethodResult, register_method
from ..core.request import ErasureRequest
from ..families import FamilyAdapter
from .closed_form import PromptPlan, ridge_gain, token_keys


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
    preserve_empty: bool = field(
        default=False, metadata={"help": "also preserve the empty prompt's keys (the 2023 code always does; RECE starts so)"}
    )
    solver: Literal["auto", "direct", "woodbury"] = field(
        default="auto", metadata={"help": "linear solver (auto: Woodbury when cheaper)"}
    )

    def validate(self) -> None:
        if self.lamb < 0 or self.erase_scale <= 0 or (self.preserve_scale is not None and self.preserve_scale < 0):
            raise ConfigError("uce needs lamb >= 0, erase_scale > 0 and preserve_scale >= 0")

    def resolved_token(self) -> str:
        return self.token or ("end" if self.variant == "2023" else "last")

    def resolved_preserve_scale(self, n_preserve: int) -> float:
        if self.preserve_scale is not None:
            return self.preserve_scale
        return max(0.1, 1.0 / max(1, n_preserve)) if self.variant == "2023" else 1.0


@register_method("uce", UCEConfig, families=("sd", "sdxl", "sd3", "flux"), kind="closed-form")
def uce(pipe, request: ErasureRequest, config: UCEConfig, adapter: FamilyAdapter, progress: bool = True) -> MethodResult:
    """Unified Concept Editing: one closed-form ridge edit of the text projections (to_k/to_v)."""
    token = config.resolved_token()
    plan = PromptPlan.build(request, config.default_anchor, ("",) if config.preserve_empty else ())
    enc = adapter.encode(pipe, plan.prompts, upto="real" if token == "last" else None)
    eta_p = config.resolved_preserve_scale(len(request.preserve) + int(config.preserve_empty))
    projections = [p for p in adapter.text_projections(pipe) if config.with_to_k or not p.path.endswith("to_k")]

    keys: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    if any(p.reads == "tokens" for p in projections):
        keys["tokens"] = token_keys(enc, plan, token)
    if any(p.reads == "pooled" for p in projections):
        pooled = enc.pooled
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
