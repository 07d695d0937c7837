"""UCE — Unified Concept Editing (Gandikota et al., WACV 2024; rohitgandikota/unified-concept-editing).

Edits every projection that reads text features with one closed-form ridge regression
(see ``closed_form.py``):

    W' = argmin η_e Σ_i ‖W' c_i − W₀ g_i‖² + η_p Σ_j ‖W' p_j − W₀ p_j‖² + λ ‖W' − W₀‖²

c_i: keys of the target prompts, g_i: keys of their guide (anchor) prompts, p_j: preserved keys.

Defaults follow the current reference script (``trainscripts/uce_sd_erase.py``): one key per prompt,
the last word token (index ``attention_mask.sum() − 2``); λ = 0.5, η_e = 1, η_p = 1; the guide ""
(whose "last word" is the BOS token); both to_k and to_v. ``variant="2023"`` follows the paper's
code instead: the target keys are the tokens from the last word to the end (EOS and padding), aligned
position by position with the guide prompt's; a preserved prompt keeps every position (BOS to the
last padding token, the code's ``new_emb[:]``), "" is always preserved, and η_p = max(0.1, 1/|P|).

The guide is expanded with the same template as its target prompt, the empty one included, as the
reference's ``--expand_prompts`` does (``f"image of {''}"``: the expanded target maps to the key of
the template's last word; only the unexpanded target maps to the BOS key of ``""``). Deliberate
difference: preserved concepts are expanded with the templates too (the script preserves only the
names it is given), so a template cannot pull a preserved concept along with the target. On SD3 and Flux, the edited maps are ``context_embedder`` (token keys)
and the pooled-text projection (pooled keys of the same prompts), as the reference does for Flux.
"""

from __future__ import annotations

from erasekit.core.registry import MethodResult, register_method
from erasekit.core.request import ErasureRequest
from erasekit.methods.diffusion.closed_form import UCEConfig, uce_edit
from erasekit.models.diffusion import FamilyAdapter


@register_method("uce", UCEConfig, families=("sd", "sdxl", "sd3", "flux"), kind="closed-form")
def uce(pipe, request: ErasureRequest, config: UCEConfig, adapter: FamilyAdapter, progress: bool = True) -> MethodResult:
    """Unified Concept Editing: one closed-form ridge edit of the text projections (to_k/to_v)."""
    return uce_edit(pipe, request, config, adapter)


__all__ = ["UCEConfig", "uce"]
