"""SAFREE — training-free and adaptive guard (Yoon et al., ICLR 2025; jaehong31/SAFREE, SD-1.4 path of
``models/modified_stable_diffusion_pipeline.py`` at b8b2c3f), as a guard: no weight changes.

1. **Concept subspace.** Each keyword (default: the request's concepts and synonyms) is encoded alone and
   its pooled output (CLIP's final-layer-normed EOS state) taken; with the keywords as the columns of
   ``E [d, K]``, ``P_C = E (EᵀE)⁺ Eᵀ``.
2. **Trigger tokens.** For a prompt ``[BOS, t_1 … t_n, EOS]`` the ``n`` masked prompts replace ``t_i`` by
   token id 0 (as released); their pooled outputs ``p_\\i`` give the distances ``d_i = ‖(I − P_C) p_\\i‖``
   and the input span ``P_I`` (the projector onto the span of the ``p_\\i``). Token ``i`` is a trigger when
   ``d_i ≥ (1 + α) · mean_{j≠i} d_j`` (α = 0.01): masking it moves the prompt furthest from the concept.
3. **Projection.** The conditional token states ``x`` of the trigger positions become ``(I − P_C) P_I x``
   (the released order; BOS, EOS and padding never change); the unconditional branch is the keywords
   joined by ", " as a negative prompt (the release passes it in every run).
4. **Self-validating filter.** ``β = 1 − mean cos(x, (I − P_C) P_I x)`` over BOS, the words and the first
   EOS (every position projected, as released), ``t' = round(up_t · σ(2k (10 β − τ)))`` with the released
   curve (k = 2.5, τ = 5.333 for nudity and objects; ``curve=artist``: k = 3.5, τ = 5.5), up_t = 10; the
   projected states are used for sampler steps ``0 … t'`` (inclusive, as released) and the original
   states after. ``svf=false`` uses them at every step.

Not carried, deliberately: the latent re-attention in Fourier space. In the released code its hooks are
registered without their ``safree`` argument and every branch falls through to a
``NotImplementedError(...)`` that is never raised, so the published SD-1.4 numbers come without it.

How it runs in erasekit: a forward hook on the text encoder computes, for every prompt it encodes, the
projected states and ``t'`` and returns the original states; erasekit's sampler (a guard, docs/guards.md)
looks each conditioning row up when a sampling run starts and swaps in the projected states for steps
``0 … t'``. A conditioning row the text encoder did not produce (no ids to mask) is refused; vectors an
attack inserts into the token embeddings (a soft prompt) change the states that are projected but not
the masked prompts, which come from the prompt's own tokens. SD 1.x/2.x
(one CLIP text encoder) only. Published settings are for 50 DPM-Solver steps; ``up_t`` counts steps.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from erasekit.core.attachments import register_attachment
from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError, IncompatibleErasureError
from erasekit.core.guards import Guard
from erasekit.core.registry import MethodResult, register_method
from erasekit.core.request import ErasureRequest
from erasekit.models.diffusion.base import Conditioning

#: How many encoded prompts a guard remembers (the oldest are forgotten first).
SEEN_MAX = 65536
#: The self-validating filter's released curves: (k, τ).
CURVES = {"nudity": (2.5, 5.333), "artist": (3.5, 5.5)}


@dataclass
class SAFREEConfig(MethodConfig):
    keywords: str | None = field(
        default=None, metadata={"help": "concept keywords separated by '|' (default: the target concepts and synonyms)"}
    )
    alpha: float = field(default=0.01, metadata={"help": "trigger threshold α: d_i ≥ (1 + α) mean of the others"})
    up_t: int = field(default=10, metadata={"help": "most steps that use the projected prompt (of 50 as released)"})
    curve: str = field(default="nudity", metadata={"help": "self-validating filter curve: nudity or artist"})
    svf: bool = field(default=True, metadata={"help": "self-validating filter (false: projected at every step)"})

    def validate(self) -> None:
        if self.curve not in CURVES:
            raise ConfigError(f"curve must be one of {', '.join(CURVES)}, got {self.curve!r}")
        if self.keywords is not None and not [k for k in self.keywords.split("|") if k.strip()]:
            raise ConfigError("keywords must name at least one keyword (separated by '|')")


def projector(columns: torch.Tensor) -> torch.Tensor:
    """``A (AᵀA)⁺ Aᵀ`` of ``columns`` ``A [d, m]`` (float64): the orthogonal projector onto their span."""
    a = columns.double()
    return a @ torch.linalg.pinv(a.T @ a) @ a.T


def step_budget(beta: torch.Tensor, up_t: int, curve: str) -> torch.Tensor:
    """``t' = round(up_t · σ(2k (10 β − τ)))`` per prompt (the released self-validating filter)."""
    k, tau = CURVES[curve]
    return torch.round(up_t * torch.sigmoid(2 * k * (10 * beta - tau))).long()


def _row_key(row: torch.Tensor) -> str:
    return hashlib.sha1(row.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


@register_attachment
class SAFREEGuard(Guard):
    """The hook and the sampler guard of the module docstring."""

    kind = "safree"

    def __init__(self, keywords: list[str], concept_projector: torch.Tensor, alpha: float, up_t: int, curve: str,
                 svf: bool) -> None:  # fmt: skip
        self.keywords, self.p_c = list(keywords), concept_projector
        self.alpha, self.up_t, self.curve, self.svf = float(alpha), int(up_t), curve, bool(svf)
        #: original row (its bytes' hash) -> (trigger positions, their projected states, t')
        self._seen: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, int]] = OrderedDict()
        self._inner = False

    # -- the text encoder's hook -------------------------------------------------------------------
    def install(self, pipe) -> list:
        encoder = pipe.text_encoder
        eos = int(pipe.tokenizer.eos_token_id)
        denoiser_dtype = next(pipe.unet.parameters()).dtype

        def hook(_m, args, kwargs, out):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if self._inner or ids is None:
                return out
            states = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            self._inner = True
            try:
                projected, budget = self.project(encoder, ids, states.detach(), eos)
            finally:
                self._inner = False
            for row, (positions, vectors), t in zip(states.to(denoiser_dtype), projected, budget.tolist()):
                self._seen[_row_key(row)] = (positions, vectors.to(denoiser_dtype), int(t))
                self._seen.move_to_end(_row_key(row))
            while len(self._seen) > SEEN_MAX:
                self._seen.popitem(last=False)
            return out

        handles = super().install(pipe)
        handles.append(encoder.register_forward_hook(hook, with_kwargs=True))
        return handles

    @torch.no_grad()
    def project(self, encoder, ids: torch.Tensor, states: torch.Tensor, eos: int) -> tuple[list, torch.Tensor]:
        """``([(trigger positions, their projected states [p, d])] per prompt, t' [B])`` of prompts
        ``ids [B, T]`` whose token states are ``states [B, T, d]``."""
        p_c = self.p_c.to(states.device)
        eye = torch.eye(p_c.shape[0], dtype=torch.float64, device=states.device)
        out_states: list = []
        budgets: list[int] = []
        for b in range(ids.shape[0]):
            row = ids[b]
            ends = (row == eos).nonzero()
            n = (int(ends[0]) if len(ends) else len(row)) - 1  # words between BOS and the first EOS
            x = states[b].double()
            if n < 1:
                budgets.append(0)
                out_states.append((torch.zeros(0, dtype=torch.long), states.new_zeros(0, states.shape[-1])))
                continue
            masked = row.repeat(n, 1)
            masked[torch.arange(n), torch.arange(1, n + 1)] = 0  # token id 0 in place of each word, as released
            pooled = self._plain_pooled(encoder, masked)  # [n, d]
            dist = ((eye - p_c) @ pooled.T).norm(dim=0)
            others = (dist.sum() - dist) / (n - 1) if n > 1 else dist
            trigger = (dist >= (1 + self.alpha) * others) if n > 1 else torch.zeros(1, dtype=torch.bool, device=dist.device)
            proj = (eye - p_c) @ projector(pooled.T)  # (I − P_C) P_I
            every = x @ proj.T  # every position projected (the filter's comparison)
            span = slice(0, n + 2)  # BOS, the words and the first EOS
            cos = torch.nn.functional.cosine_similarity(x[span], every[span], dim=-1)
            beta = 1 - cos.mean()
            budgets.append(int(step_budget(beta, self.up_t, self.curve)) if self.svf else 10**9)
            positions = 1 + trigger.nonzero().flatten()
            out_states.append((positions.cpu(), every[positions].to(states.dtype)))
        return out_states, torch.tensor(budgets)

    @staticmethod
    def _plain_pooled(encoder, ids: torch.Tensor) -> torch.Tensor:
        """Pooled outputs of ``ids`` with the token embedding's own forward hooks held back: an attack
        that inserts vectors there (a soft prompt) writes them into *its* encode, not into the masked
        prompts, which SAFREE builds from the prompt's tokens."""
        embedding = encoder.get_input_embeddings()
        held = dict(embedding._forward_hooks)
        embedding._forward_hooks.clear()
        try:
            return encoder(ids).pooler_output.double()
        finally:
            embedding._forward_hooks.update(held)

    # -- the sampler guard ---------------------------------------------------------------------------
    def negative(self) -> str | None:
        return ", ".join(self.keywords)

    def condition(self, state: Any, step: int, cond: Any) -> tuple[Any, Any]:
        if state is None:  # the first step of a run: look every row up once, build its projected states
            found = [self._seen.get(_row_key(r)) for r in cond.tokens]
            if any(f is None for f in found):
                raise IncompatibleErasureError(
                    "safree: a conditioning row did not come from the text encoder's prompt ids (it projects prompts it "
                    "can re-encode with a word masked); attacks that edit conditionings after the encoder cannot run on it"
                )
            safe = cond.tokens.clone()
            for b, (positions, vectors, _t) in enumerate(found):  # type: ignore[misc]
                safe[b, positions.to(safe.device)] = vectors.to(safe)
            state = (safe, torch.tensor([f[2] for f in found]))  # type: ignore[index]
        safe, budget = state
        use = (step <= budget).to(cond.tokens.device).view(-1, 1, 1)
        if not bool(use.any()):
            return cond, state
        return Conditioning(torch.where(use, safe, cond.tokens), cond.extra), state

    def config(self) -> dict:
        return {"keywords": self.keywords, "alpha": self.alpha, "up_t": self.up_t, "curve": self.curve, "svf": self.svf}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"concept_projector": self.p_c.float().contiguous()}

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "SAFREEGuard":
        return cls(config["keywords"], tensors["concept_projector"].double(), config["alpha"], config["up_t"], config["curve"],
                   config["svf"])  # fmt: skip


@register_method("safree", SAFREEConfig, families=("sd",), kind="guard")
def safree(pipe, request: ErasureRequest, config: SAFREEConfig, adapter=None, progress: bool = True) -> MethodResult:
    """Guard: SAFREE, trigger tokens projected away from the concept subspace for the first steps (no weight changes)."""
    keywords = (
        [k.strip() for k in config.keywords.split("|") if k.strip()]
        if config.keywords is not None
        else [p for t in request.targets for p in t.phrases()]
    )
    tok = pipe.tokenizer
    ids = tok(keywords, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        pooled = pipe.text_encoder(ids.to(pipe.text_encoder.device)).pooler_output.double()  # [K, d]
    if not math.isfinite(float(pooled.abs().sum())):
        raise ConfigError("safree: a keyword's pooled embedding is not finite")
    guard = SAFREEGuard(keywords, projector(pooled.T).cpu(), config.alpha, config.up_t, config.curve, config.svf)
    return MethodResult({}, {"keywords": keywords, "subspace_rank": int(torch.linalg.matrix_rank(pooled))}, attachment=guard)
