"""SPM — One-dimensional adapters to rule them all (Lyu et al., CVPR 2024; Con6924/SPM).

A rank-1 adapter on every Linear (and 1×1 Conv) layer of the UNet's transformer blocks
(``...attentions.N...``): ``y = W x + s · u (vᵀ x)``, ``u`` zero-initialised. The UNet stays frozen;
the adapters train with

    L = ‖ f_A(x_t, c) − [f*(x_t, c) − η (f*(x_t, c) − f*(x_t, ∅))] ‖²  +  β Σ_a ‖ f_A(x_t, c_a) − f*(x_t, c_a) ‖²

(ESD with the reference's target ``f*(∅) − η_ref (f*(c) − f*(∅))``, η_ref = 1, i.e. ``2 f*(∅) − f*(c)``:
η = 2 in the form above, the default; plus *latent anchoring* on anchor prompts ``c_a`` dissimilar to
the target, β 1000).

At inference each SPM is scaled per image by its concept's similarity to the prompt ("facilitated
transport"): ``s = clamp(max_i cos(h_i, h_c), 0, 1)`` where ``h_i`` are the prompt's token features
reaching the UNet and ``h_c`` the concept's last-word feature. A forward pre-hook on the UNet computes
``s`` for every row of the batch, so several SPMs compose: each scales itself. Loaded as a plain LoRA
the adapter would lose this; here it is an attachment (``Erasure.apply`` installs it, ``remove`` takes
it off, ``export`` refuses it).

Deliberate differences from the reference (``infer_spm.py``), which computes one multiplier per
prompt as max(cosine of the flattened padded embeddings, share of the concept's tokens present in the
prompt) and applies it to the whole pipeline call, unconditional branch included: the hook sees only
the embeddings reaching the UNet (no token ids, so no token overlap) and scales each row by its own
similarity, which works for any caller of the pipeline without pairing CFG rows. Measured on the
testbed for ``star`` (check ``star-spm-multiplier`` of benchmarks/results/testbed_checks.json): 1.00 for ``star``, 0.96 for a full description naming it, 0.60 for the empty
prompt, 0.37 for an unrelated description. Evaluating the same testbed SPM with the reference-like
fixed multiplier 1 everywhere instead raised UA only from 50 % to 62 % and cost 17 points of IRA, so
the transport is not what limits SPM's UA there.

Anchors (``anchors="released"``, the default: Con6924/SPM@3dd762e as released): every step draws
``anchor_batch`` (the reference's ``sampling_batch_size``, 4) fresh Gaussian embeddings ``s_k`` of the
target's shape, scaled to its norm (see :func:`random_anchor`), and interleaves them with the empty
prompt, ``[∅, s₁, ∅, s₂, ∅, s₃, ∅, s₄]`` (``src/engine/sampling.py``). The released ``predict_noise``
splits that batch in halves as if it were ``[uncond, text]`` and at guidance 1 returns the second
half, so the anchors the loss really holds are ``[∅, s₃, ∅, s₄]``: half of β keeps ``f(∅)`` — the
unconditional branch of every guided sample — fixed, and ``s₁, s₂`` are drawn and never used.
erasekit reproduces that set by default (the second half of the interleaved list, whatever
``anchor_batch``), since it is what the published results were trained with. ``anchors="random"``
is the paper's intent without the quirk: all ``anchor_batch`` random embeddings and no ``∅`` (what
erasekit did before, with one embedding per step: the adapters were free to move ``f(∅)``).
``anchors="vocabulary"`` uses the request's preserved concepts plus ``n_anchors`` words of the
tokenizer's vocabulary whose feature similarity to every target is below ``anchor_max_similarity``.
Defaults: η 2 (see above), β 1000, Adam lr 1e-4, 3000 iterations (reference); the transport runs in
every forward, training uses ``s = 1``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from erasekit.core.attachments import Attachment, get_module, register_attachment
from erasekit.core.errors import ConfigError, UnsupportedModelError
from erasekit.core.registry import MethodResult, register_method
from erasekit.models.diffusion.base import Conditioning
from erasekit.training import TrajectoryConfig, Workbench, esd_point, fit, target_prompts
from erasekit.training.diffusion import PipeView


def _adapted_layers(unet: nn.Module) -> dict[str, tuple[int, int]]:
    """``{module name: (in, out)}`` of every Linear / 1x1 Conv inside the UNet's transformer blocks."""
    out = {}
    for name, m in unet.named_modules():
        if ".attentions." not in f".{name}" and not name.startswith("attentions"):
            continue
        if isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features)
        elif isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
            out[name] = (m.in_channels, m.out_channels)
    return out


@register_attachment
class SPMAdapters(Attachment):
    kind = "spm"

    def __init__(
        self, component: str, down: dict[str, torch.Tensor], up: dict[str, torch.Tensor], concept_features: torch.Tensor
    ):
        self.component = component
        self.down = {k: nn.Parameter(v) for k, v in down.items()}  # [1, in]
        self.up = {k: nn.Parameter(v) for k, v in up.items()}  # [out, 1]
        self.concept_features = concept_features  # [n_concepts, d]
        self.fixed_scale: float | None = None  # training: 1.0; inference: facilitated transport
        self._scale: torch.Tensor | None = None

    @staticmethod
    def build(unet: nn.Module, component: str, concept_features: torch.Tensor) -> "SPMAdapters":
        gen = torch.Generator().manual_seed(0)
        layers = _adapted_layers(unet)
        if not layers:
            raise UnsupportedModelError("spm needs transformer blocks (attentions.*) in the UNet")
        down = {k: torch.randn(1, i, generator=gen) / i**0.5 for k, (i, o) in layers.items()}
        up = {k: torch.zeros(o, 1) for k, (i, o) in layers.items()}
        return SPMAdapters(component, down, up, concept_features)

    def parameters(self) -> dict[str, nn.Parameter]:
        return {**{f"spm.{k}.down": p for k, p in self.down.items()}, **{f"spm.{k}.up": p for k, p in self.up.items()}}

    def transport(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-row scale ``[B]``: max over tokens and concepts of the cosine similarity, clamped to [0, 1]."""
        h = F.normalize(tokens.float(), dim=-1)
        c = F.normalize(self.concept_features.to(h), dim=-1)
        return torch.einsum("btd,cd->btc", h, c).amax(dim=(1, 2)).clamp(0, 1)

    def install(self, pipe) -> list:
        unet = getattr(pipe, self.component)
        device = next(unet.parameters()).device
        for d in (self.down, self.up):
            for k, p in d.items():
                if p.device != device:  # a new parameter on the device (``.data =`` cannot change a tensor's type)
                    d[k] = nn.Parameter(p.detach().to(device), requires_grad=p.requires_grad)

        def pre(_m, args, kwargs):
            tokens = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
            self._scale = None if self.fixed_scale is not None else self.transport(tokens)

        handles = [unet.register_forward_pre_hook(pre, with_kwargs=True)]
        for name in self.down:
            module = get_module(pipe, f"{self.component}.{name}")

            def hook(m, args, out, name=name):
                x = args[0]
                down, up = self.down[name], self.up[name]
                if isinstance(m, nn.Conv2d):
                    delta = torch.einsum("bihw,ri,or->bohw", x.float(), down, up)
                else:
                    delta = (x.float() @ down.t()) @ up.t()
                s = self.fixed_scale if self.fixed_scale is not None else self._scale
                if isinstance(s, torch.Tensor):
                    rows = s.shape[0]
                    s = (
                        s.view(rows, *[1] * (delta.dim() - 1))
                        if delta.shape[0] == rows
                        else s.repeat_interleave(delta.shape[0] // rows).view(-1, *[1] * (delta.dim() - 1))
                    )
                return out + (s * delta).to(out.dtype)

            handles.append(module.register_forward_hook(hook))
        return handles

    def config(self) -> dict:
        return {"component": self.component, "layers": sorted(self.down)}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"concept_features": self.concept_features.detach().cpu().contiguous()}
        out.update({f"{k}.down": p.detach().cpu().contiguous() for k, p in self.down.items()})
        out.update({f"{k}.up": p.detach().cpu().contiguous() for k, p in self.up.items()})
        return out

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "SPMAdapters":
        layers = config["layers"]
        return cls(
            config["component"],
            {k: tensors[f"{k}.down"] for k in layers},
            {k: tensors[f"{k}.up"] for k in layers},
            tensors["concept_features"],
        )


@dataclass
class SPMConfig(TrajectoryConfig):
    anchor_weight: float = field(default=1000.0, metadata={"help": "β of latent anchoring"})
    anchors: str = field(
        default="released",
        metadata={
            "help": "released (random embeddings interleaved with '' as the reference's batch: [∅, s3, ∅, s4]), "
            "random (anchor_batch random embeddings, no ∅) or vocabulary (dissimilar words)"
        },
    )
    anchor_batch: int = field(default=4, metadata={"help": "random embeddings drawn per step (sampling_batch_size)", "min": 1})
    n_anchors: int = field(default=32, metadata={"help": "vocabulary words drawn as anchor prompts"})
    anchor_max_similarity: float = field(
        default=0.5, metadata={"help": "anchors must be less similar than this to every target", "max": 1}
    )
    iterations: int = field(default=3000, metadata={"help": "optimisation steps", "min": 1})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate", "gt": 0})

    def validate(self) -> None:
        self.check_trajectory("spm")
        if self.anchor_weight < 0 or self.n_anchors < 0:
            raise ConfigError("spm needs anchor_weight >= 0 and n_anchors >= 0")
        if self.anchors not in ("released", "random", "vocabulary"):
            raise ConfigError(f"spm's anchors must be released, random or vocabulary, got {self.anchors!r}")
        if self.anchor_batch < 1:
            raise ConfigError("spm needs anchor_batch >= 1")
        if self.anchors == "vocabulary" and self.anchor_batch != 4:
            raise ConfigError(
                "spm's anchor_batch applies to random-embedding anchors (anchors=released or random), not vocabulary"
            )
        if self.anchors != "vocabulary" and (self.n_anchors != 32 or self.anchor_max_similarity != 0.5):
            raise ConfigError("spm's n_anchors and anchor_max_similarity apply to anchors=vocabulary only (drop them or set it)")
        if self.lora_rank:
            raise ConfigError("spm trains its own rank-1 adapters; set lora_rank=0")


def last_word_features(bench: Workbench, prompts: list[str]) -> torch.Tensor:
    enc = bench.adapter.encode(bench.pipe, prompts, upto="real")
    return enc.last_word_vectors()


def anchor_prompts(bench: Workbench, request, config: SPMConfig, target_features: torch.Tensor, seed: int) -> list[str]:
    """Preserved concepts plus vocabulary words dissimilar to every target (see the module docstring)."""
    anchors = request.preserve_prompts()
    words = sorted({w[:-4] for w in bench.pipe.tokenizer.get_vocab() if w.endswith("</w>") and w[:-4].isalpha() and len(w) > 6})
    random.Random(seed).shuffle(words)
    candidates = words[: 4 * config.n_anchors]
    if candidates and config.n_anchors:
        feats = F.normalize(last_word_features(bench, candidates).float(), dim=-1)
        sims = feats @ F.normalize(target_features.float(), dim=-1).t()
        keep = [w for w, s in zip(candidates, sims.amax(dim=1)) if float(s) < config.anchor_max_similarity]
        anchors += keep[: config.n_anchors]
    return anchors or [""]


def random_anchor(target: Conditioning, gen: torch.Generator) -> Conditioning:
    """The reference's anchor (``src/engine/sampling.py``): a Gaussian embedding of the target's shape,
    accepted with probability ``1 − cos(target, noise)`` and scaled to the target's norm times U(0.8, 1.2);
    SDXL's pooled text embedding is drawn the same way, its time ids are kept."""

    def draw(x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(-1).float().cpu()
        while True:
            noise = torch.randn(flat.shape, generator=gen)
            noise = noise / noise.norm()
            if float(torch.rand((), generator=gen)) < 1 - float(F.cosine_similarity(flat, noise, dim=0)):
                break
        scale = 0.8 + 0.4 * float(torch.rand((), generator=gen))
        return (scale * noise * flat.norm()).reshape(x.shape).to(x)

    extra = dict(target.extra)
    if "added_cond_kwargs" in extra:
        extra["added_cond_kwargs"] = {
            **extra["added_cond_kwargs"],
            "text_embeds": draw(extra["added_cond_kwargs"]["text_embeds"]),
        }
    return Conditioning(draw(target.tokens), extra)


def anchor_batch(target: Conditioning, empty: Conditioning, k: int, released: bool, gen: torch.Generator) -> Conditioning:
    """The step's anchors: ``k`` random embeddings (:func:`random_anchor`); ``released``: the second
    half of ``[∅, s₁, ∅, s₂, ..., ∅, s_k]``, the rows the released ``predict_noise`` anchors."""
    draws = [random_anchor(target, gen) for _ in range(k)]
    if not released:
        return Conditioning.cat(draws)
    interleaved = [c for s in draws for c in (empty, s)]
    return Conditioning.cat(interleaved[len(interleaved) // 2 :])


class SPMObjective:
    def __init__(self, bench: Workbench, prompts: list[str], anchors: list[str] | None, config: SPMConfig):
        """``anchors``: anchor prompts, or ``None`` for the reference's random embeddings."""
        self.bench, self.prompts, self.anchors, self.config = bench, prompts, anchors, config
        self.cond, self.uncond = bench.cond(prompts), bench.cond([""])
        self.anchor_cond = bench.cond(anchors) if anchors else None

    def loss(self, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, bench = self.config, self.bench
        i = int(torch.randint(0, len(self.prompts), (1,), generator=gen))
        cond = self.cond.select([i])
        pt = esd_point(bench, cond, self.uncond, cfg, gen)
        xt, t = pt.xt, pt.t
        if self.anchor_cond is None:
            anchor = anchor_batch(cond, self.uncond, cfg.anchor_batch, cfg.anchors == "released", gen)
        else:
            a = int(torch.randint(0, self.anchor_cond.tokens.shape[0], (1,), generator=gen))
            anchor = self.anchor_cond.select([a])
        n = anchor.tokens.shape[0]
        xa, ta = xt.expand(n, *xt.shape[1:]), t.expand(n)  # every anchor at the step's x_t and t
        f_a = bench.teacher_predict(xa, ta, anchor)
        return {
            "esd": F.mse_loss(bench.predict(xt, t, cond).float(), pt.target.float()),
            "anchor": cfg.anchor_weight * F.mse_loss(bench.predict(xa, ta, anchor).float(), f_a.float()),
        }


@register_method("spm", SPMConfig, families=("sd", "sdxl"), kind="adapter", accepts=("checkpoints",))
def spm(
    pipe, request, config: SPMConfig, adapter, progress: bool = True, checkpoint_dir: str | None = None, resume: bool = False
) -> MethodResult:
    """SPM: rank-1 adapters with latent anchoring, scaled at inference by prompt-concept similarity."""
    if adapter.objective != "ddpm":
        raise UnsupportedModelError(f"spm adapts UNet transformer blocks; {adapter.name} is not supported")
    prompts = target_prompts(request)
    with Workbench(pipe, adapter, [adapter.denoiser]) as bench:
        concept_features = last_word_features(bench, [ph for t in request.targets for ph in t.phrases()])
        spm_adapters = SPMAdapters.build(bench.student[adapter.denoiser], adapter.denoiser, concept_features)
        spm_adapters.fixed_scale = 1.0
        handles = spm_adapters.install(PipeView(pipe, bench.student))
        try:
            anchors = (
                anchor_prompts(bench, request, config, concept_features, config.seed) if config.anchors == "vocabulary" else None
            )
            params = spm_adapters.parameters()
            objective = SPMObjective(bench, prompts, anchors, config)
            info = {
                "layers": len(spm_adapters.down),
                "numel": int(sum(p.numel() for p in params.values())),
                "anchors": f"{config.anchors} random embeddings ({config.anchor_batch} per step)"
                if anchors is None
                else len(anchors),
            }
            result = fit(bench, params, objective, config.settings(checkpoint_dir, resume), progress, desc="spm", info=info)
        finally:
            for h in handles:
                h.remove()
        return MethodResult(
            weights={}, info=result.info, attachment=SPMAdapters.restore(spm_adapters.config(), spm_adapters.tensors())
        )
