"""LEACE — LEAst-squares Concept Erasure (Belrose et al. 2023; EleutherAI/concept-erasure), applied to
the residual stream of a language model to erase "this text is about a forgotten entity".

For hidden states ``x`` with the binary label ``z`` (1 on every token of the forget pairs, 0 on
retain pairs), LEACE is the smallest (in the whitened metric) affine edit after which no linear
classifier beats a constant one:

    x' = x − W⁺ P W (x − μ),   W = Σ_xx^{-1/2},  P = projection onto span(W Σ_xz),

and for one binary concept ``P`` has rank one, so ``x' = x − a (bᵀ(x − μ))`` with ``a = W⁺u/‖u‖``,
``b = Wu/‖u‖``, ``u = W Σ_xz`` (stored per layer: μ, a, b). Fitted in closed form on the model's
own hidden states (float64); ``Σ_xx^{-1/2}`` is taken on its eigenvalues above ``1e-6 · max`` (a
pseudo-inverse). With ``layers="all"`` the erasers are fitted one block after another, each on the
hidden states produced with the earlier ones installed (the paper's *concept scrubbing*); a number
erases at that block only. Installed as forward hooks on the blocks' outputs (an attachment: the
weights do not change). The package ``concept-erasure`` is not a dependency: the formula is ten
lines, written here and tested for its guarantee (equal class means after erasure).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.core.attachments import Attachment, get_module, register_attachment
from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult, register_method
from erasekit.models.causal_lm import decoder_blocks  # noqa: F401  (also importable from here)
from erasekit.models.lm_batches import encode_pairs


@dataclass
class LEACEConfig(MethodConfig):
    layers: str = field(default="all", metadata={"help": "all (concept scrubbing over every block) or one block index"})
    max_retain: int = field(default=400, metadata={"help": "retain pairs sampled to fit the erasers", "min": 1})
    batch_size: int = field(default=64, metadata={"help": "pairs per forward pass while collecting states", "min": 1})

    def validate(self) -> None:
        if self.layers != "all" and not self.layers.lstrip("-").isdigit():
            raise ConfigError(f"layers={self.layers!r}: use all or a block index")


def fit_leace(x: torch.Tensor, z: torch.Tensor, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """``{"mean", "a", "b"}`` of the rank-one LEACE eraser of the binary label ``z`` from states ``x`` (N×d)."""
    x, z = x.double(), z.double()
    mu = x.mean(0)
    xc, zc = x - mu, z - z.mean()
    cov = xc.T @ xc / len(x)
    cross = xc.T @ zc / len(x)
    vals, vecs = torch.linalg.eigh(cov)
    keep = vals > eps * vals.max()
    inv_sqrt = (vecs[:, keep] / vals[keep].sqrt()) @ vecs[:, keep].T
    sqrt = (vecs[:, keep] * vals[keep].sqrt()) @ vecs[:, keep].T
    u = inv_sqrt @ cross
    if u.norm() == 0:
        raise ConfigError("LEACE: the forget and retain states have the same mean; there is nothing to erase")
    u = u / u.norm()
    return {"mean": mu.float(), "a": (sqrt @ u).float(), "b": (inv_sqrt @ u).float()}


def erase_states(h: torch.Tensor, eraser: dict[str, torch.Tensor]) -> torch.Tensor:
    """``h − a (bᵀ(h − μ))`` in float32, returned in ``h``'s dtype."""
    mu, a, b = (eraser[k].to(h.device) for k in ("mean", "a", "b"))
    hf = h.float()
    return (hf - ((hf - mu) @ b)[..., None] * a).to(h.dtype)


@register_attachment
class LEACEErasers(Attachment):
    """Rank-one LEACE erasers on the outputs of transformer blocks (forward hooks)."""

    kind = "leace"

    def __init__(self, erasers: dict[str, dict[str, torch.Tensor]]):
        self.erasers = erasers

    def install(self, pipe) -> list:
        handles = []
        for path, eraser in self.erasers.items():

            def hook(_m, _args, out, eraser=eraser):
                if isinstance(out, tuple):
                    return (erase_states(out[0], eraser), *out[1:])
                return erase_states(out, eraser)

            handles.append(get_module(pipe, path).register_forward_hook(hook))
        return handles

    def config(self) -> dict:
        return {"paths": list(self.erasers)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{p}.{k}": v.contiguous() for p, e in self.erasers.items() for k, v in e.items()}

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "LEACEErasers":
        return cls({p: {k: tensors[f"{p}.{k}"] for k in ("mean", "a", "b")} for p in config["paths"]})


@torch.no_grad()
def block_states(lm, pairs, path: str, batch_size: int) -> torch.Tensor:
    """Output states of block ``path`` on every non-padding token of ``pairs`` (N×d, float32, CPU)."""
    captured: list[torch.Tensor] = []
    handle = get_module(lm, path).register_forward_hook(
        lambda _m, _a, out: captured.append((out[0] if isinstance(out, tuple) else out).float().cpu())
    )
    states = []
    try:
        for i in range(0, len(pairs), batch_size):
            batch = encode_pairs(lm.tokenizer, pairs[i : i + batch_size], lm.device)
            captured.clear()
            lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            states.append(captured[-1][batch["attention_mask"].cpu().bool()])
    finally:
        handle.remove()
    return torch.cat(states)


@register_method("leace", LEACEConfig, families=("causal-lm",), kind="closed-form")
def leace(lm, request, config: LEACEConfig, adapter=None, progress: bool = True) -> MethodResult:
    """Closed-form linear erasure of forget-vs-retain from the residual stream (concept scrubbing)."""
    if not request.retain:
        raise ConfigError("leace needs retain pairs: the concept is what separates forget from retain states")
    paths = decoder_blocks(lm.model)
    if config.layers != "all":
        i = int(config.layers)
        if not -len(paths) <= i < len(paths):
            raise ConfigError(f"layers={config.layers}: this model has blocks 0..{len(paths) - 1}")
        paths = [paths[i]]
    g = torch.Generator().manual_seed(0)
    retain = [request.retain[int(i)] for i in torch.randperm(len(request.retain), generator=g)[: config.max_retain]]
    guard = LEACEErasers({})
    handles: list = []
    try:
        for path in paths:  # sequential fitting: each block sees the states the earlier erasers produce
            xf = block_states(lm, request.forget, path, config.batch_size)
            xr = block_states(lm, retain, path, config.batch_size)
            z = torch.cat([torch.ones(len(xf)), torch.zeros(len(xr))])
            guard.erasers[path] = fit_leace(torch.cat([xf, xr]), z)
            for h in handles:
                h.remove()
            handles = guard.install(lm)
    finally:
        for h in handles:
            h.remove()
    return MethodResult({}, {"layers": paths, "fit_tokens": {"forget": len(xf), "retain": len(xr)}}, attachment=guard)
