"""TIME — Text-to-Image Model Editing (Orgad, Kawar & Belinkov, ICCV 2023; bahjat-kawar/time-diffusion).

The λ-only closed form on aligned tokens (paper Eq. 5):

    W' = argmin Σ_prompts Σ_positions ‖W' c_i − W₀ c*_{a(i)}‖² + λ ‖W' − W₀‖²

c: *every* token position of the source prompt (BOS, words, EOS and padding), c*: the destination
prompt's token at the aligned position a(i). Defaults as the reference: λ = 0.1, both to_v and to_k
(the diffusers port's ``with_to_k=True``), and three augmentations "a photo of / an image of / a
picture of" (the request's templates replace them when given).

Alignment: TIME's greedy rule — each source token is matched to the next equal destination token,
positions after the source's last token continue one by one, the rest point at the last position.
TIME assumes the destination contains every source word (an *edit* "roses" → "blue roses"). For an
*erasure* pair ("a star" → "a shape") it does not, so erasekit falls back, deliberately, to aligning
the common prefix and suffix of the two token lists (template words, EOS) position by position, the
differing middle right-aligned (the concept's last token onto the anchor's last token), and the
padding continuing after each prompt's EOS. Preserved concepts are not part of TIME; they are added
with weight ``preserve_scale`` only when it is set above 0. UNet families only (the alignment is on
CLIP token ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult, register_method
from erasekit.core.request import ErasureRequest
from erasekit.methods.diffusion.closed_form import PROMPT_AUGMENTATIONS, ridge_gain
from erasekit.models.diffusion import FamilyAdapter


@dataclass
class TIMEConfig(MethodConfig):
    lamb: float = field(default=0.1, metadata={"help": "ridge weight λ (smaller edits harder)"})
    with_to_k: bool = field(default=True, metadata={"help": "edit to_k as well as to_v"})
    augment: bool = field(default=True, metadata={"help": "add TIME's 3 augmentations (or the request's templates)"})
    default_anchor: str = field(default="", metadata={"help": "destination for targets without an anchor"})
    preserve_scale: float = field(default=0.0, metadata={"help": "weight of preserved concepts (not in TIME; 0 = off)"})

    def validate(self) -> None:
        if self.lamb <= 0:
            raise ConfigError("time needs lamb > 0 (its system has no other regulariser)")
        if self.preserve_scale < 0:
            raise ConfigError("time needs preserve_scale >= 0")


def greedy_alignment(src: list[int], dst: list[int], length: int) -> list[int] | None:
    """TIME's rule; ``None`` when a source token has no match left in the destination."""
    out, j = [], 0
    for token in src:
        while j < len(dst) and dst[j] != token:
            j += 1
        if j >= len(dst):
            return None
        out.append(j)
        j += 1
    out += list(range(j, length))
    return (out + [length - 1] * length)[:length]


def erasure_alignment(src: list[int], dst: list[int], length: int) -> list[int]:
    """Prefix / right-aligned middle / suffix alignment for pairs whose words differ (see module doc)."""
    p = 0
    while p < min(len(src), len(dst)) - 1 and src[p] == dst[p]:
        p += 1
    s = 0
    while s < min(len(src), len(dst)) - p and src[-1 - s] == dst[-1 - s]:
        s += 1
    out = list(range(p))
    mid_s, mid_d = len(src) - p - s, len(dst) - p - s
    for k in range(mid_s):  # right-aligned, clamped to the destination's first middle token
        out.append(p + max(0, mid_d - mid_s + k) if mid_d > 0 else max(0, p - 1))
    out += [len(dst) - s + k for k in range(s)]
    out += [min(length - 1, len(dst) + k) for k in range(length - len(src))]  # padding continues after EOS
    return out[:length]


def align(src: list[int], dst: list[int], length: int) -> list[int]:
    return greedy_alignment(src, dst, length) or erasure_alignment(src, dst, length)


@register_method("time", TIMEConfig, families=("sd", "sdxl"), kind="closed-form")
def time_edit(pipe, request: ErasureRequest, config: TIMEConfig, adapter: FamilyAdapter, progress: bool = True) -> MethodResult:
    """TIME: λ-regularised closed-form edit of cross-attention on all (aligned) tokens of the prompts."""
    templates = ["{}", *(request.templates or PROMPT_AUGMENTATIONS)] if config.augment else ["{}"]
    pairs: list[tuple[str, str]] = []
    for t in request.targets:
        anchor = config.default_anchor if t.anchor is None else t.anchor
        pairs += [(tpl.format(phrase), tpl.format(anchor).strip()) for phrase in t.phrases() for tpl in templates]
    preserve = request.preserve_prompts() if config.preserve_scale > 0 else []
    prompts = list(dict.fromkeys([*(a for a, _ in pairs), *(b for _, b in pairs), *preserve]))
    row = {p: i for i, p in enumerate(prompts)}
    enc = adapter.encode(pipe, prompts)
    length = enc.tokens.shape[1]
    tok = pipe.tokenizer
    ce, cg = [], []
    for src, dst in pairs:
        a = align(tok(src).input_ids, tok(dst).input_ids, length)
        ce.append(enc.tokens[row[src]])
        cg.append(enc.tokens[row[dst], torch.tensor(a)])
    cp = [enc.tokens[row[p]] for p in preserve]
    d = enc.tokens.shape[-1]
    gain = ridge_gain(
        torch.cat(ce), torch.cat(cg), torch.cat(cp) if cp else enc.tokens.new_zeros(0, d),
        lam=config.lamb, eta_e=1.0, eta_p=config.preserve_scale,
    )  # fmt: skip
    projections = [p for p in adapter.text_projections(pipe) if config.with_to_k or not p.path.endswith("to_k")]
    weights = {p.weight_key: gain.edit(p.module.weight) for p in projections}
    return MethodResult(weights, {"pairs": len(pairs), "target_keys": sum(len(c) for c in ce), "solver": gain.solver})
