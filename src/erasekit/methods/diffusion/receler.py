"""Receler — Reliable Concept Erasing via Lightweight Erasers (Huang et al., ECCV 2024;
jasper0314-huang/Receler@3ccedc9).

A small eraser after every cross-attention layer of the UNet: ``h ← h + E_l(h)``, ``E_l = Linear(C, r)
→ GELU → Linear(r, C)`` with the last layer zero-initialised (the model is unchanged at step 0). The
UNet itself stays frozen; only the erasers train, with

    L = ‖ f_E(x_t, c) − [f*(x_t, c) − η (f*(x_t, c) − f*(x_t, ∅))] ‖²
        + λ mean_l [ Σ_{pixels ∉ M} mean_channels E_l(h_l)² / #{pixels ∉ M} ]

(the ESD loss plus concept-localised regularisation: eraser output outside the concept's region ``M``
is penalised, normalised by the number of pixels outside it, ``train_receler.py:170-186``).

**The mask, as released** (``receler/concept_reg.py``): from the *frozen* model's pass (erasers off)
with the concept's prompt at the step's ``x_t``, the cross-attention probabilities of the concept's
tokens, averaged over those tokens and the heads, in the layers of one resolution only — 16 × 16 on
SD 1.x at 512 px ("following MasaCtrl"), i.e. a quarter of the latent side; here the layers whose
side is nearest to ``latent side / 4``, so SDXL and the testbed get the same level — averaged over
those layers, min-max normalised per image, set to 1 where ``≥ mask_threshold`` (0.1) and 0 below,
and resized by nearest neighbour to each eraser's resolution. On the testbed (``mask_source=auto``)
the regulariser uses exact masks instead: each step it also noises one of ``n_images`` world renders
of the concept (at the step's timestep), runs it with the concept's prompt, and penalises eraser
output outside the render's exact region (area-downsampled to each layer's resolution);
``mask_source=attention`` keeps cross-attention masks on the testbed too.

**Adversarial prompts** (``adv_space="output"``, the reference's space): ``adv_tokens`` (16) vectors
that overwrite the text encoder's *output* at the positions right after the concept's tokens, drawn
from U[0, 1) once per target prompt and kept across steps, Adam lr 0.1, weight decay 0.1; every
``adv_every`` iterations after ``adv_warmup``, ``adv_steps`` (50) inner steps minimise
``‖f_E(x_t, c_adv) − f*(x_t, c)‖²`` (the erased model drawing the concept again), and the ESD loss is
also applied to the adversarial conditioning. The released loop writes the vectors through ``.data``
of an advanced-indexing copy (``train_receler.py:149``), a silent no-op, so its adversary never
reached the UNet; erasekit's write is out of place and does. ``adv_space="embedding"`` is erasekit's
earlier adversary: word-embedding prefix vectors (``attacks/diffusion/soft_prompt.py``, from the
``filler`` word "a"; its earlier rate was ``adv_lr=1e-3``, its Adam has no weight decay).

The target is the reference's ``f*(∅) − η_ref (f*(c) − f*(∅))`` with η_ref = 1, i.e. ``2 f*(∅) − f*(c)``:
η = 2 in the ESD form above (the default).

Defaults as released (``train_receler.py`` argparse and loop): rank 128, λ 0.1, mask threshold 0.1,
500 iterations, Adam lr 3e-4, the inner attack every iteration from the first (``advrs_iters`` 50;
the reference never reads ``start_advrs_train``). Deviation: ``x_t`` comes from the frozen model's
trajectory (the reference samples it with the erasers on), as every ESD-family method here. The
eraser is an attachment, not a weight change: ``Erasure.apply`` hooks it in, ``remove`` takes it off,
and ``erasekit export`` refuses it (a plain diffusers pipeline cannot hold it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from erasekit.attacks.diffusion.soft_prompt import SoftPrompt, SoftPromptConfig, optimise_soft_prompt
from erasekit.core.attachments import Attachment, get_module, register_attachment
from erasekit.core.errors import ConfigError, UnsupportedModelError
from erasekit.core.registry import MethodResult, register_method
from erasekit.training import TrajectoryConfig, Workbench, esd_point, fit
from erasekit.training.attention import CrossAttentionProbe, concept_positions, layer_mask
from erasekit.training.diffusion import PipeView


def _eraser(channels: int, rank: int) -> nn.Sequential:
    last = nn.Linear(rank, channels)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Linear(channels, rank), nn.GELU(), last)


@register_attachment
class ReceleErasers(Attachment):
    """One eraser per cross-attention module (``unet...attn2``), added to its output by a forward hook."""

    kind = "receler"

    def __init__(self, erasers: dict[str, nn.Sequential], rank: int):
        self.erasers, self.rank = erasers, rank
        self.capture: list[torch.Tensor] | None = None  # eraser outputs of the last forward, when set to []
        self.enabled = True  # False: the hooks pass the attention output through (the reference's DisableEraser)

    @staticmethod
    def build(unet: nn.Module, component: str, rank: int) -> "ReceleErasers":
        with torch.random.fork_rng(devices=[]):  # deterministic initialisation without touching the caller's RNG
            torch.manual_seed(0)
            erasers = {
                f"{component}.{name}": _eraser(m.to_out[0].out_features, rank)
                for name, m in unet.named_modules()
                if name.endswith("attn2")
            }
        if not erasers:
            raise UnsupportedModelError("receler needs cross-attention modules named attn2 (UNet models)")
        return ReceleErasers(erasers, rank)

    def parameters(self) -> dict[str, nn.Parameter]:
        return {f"receler.{path}.{n}": p for path, net in self.erasers.items() for n, p in net.named_parameters()}

    def install(self, pipe) -> list:
        handles = []
        for path, net in self.erasers.items():
            module = get_module(pipe, path)
            net.to(next(module.parameters()).device)

            def hook(_m, _args, out, net=net):
                if not self.enabled:
                    return out
                delta = net(out.to(net[0].weight.dtype)).to(out.dtype)
                if self.capture is not None:
                    self.capture.append(delta)
                return out + delta

            handles.append(module.register_forward_hook(hook))
        return handles

    def config(self) -> dict:
        return {"rank": self.rank, "paths": list(self.erasers), "channels": [net[0].in_features for net in self.erasers.values()]}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"{path}.{n}": p.detach().cpu().contiguous() for path, net in self.erasers.items() for n, p in net.named_parameters()
        }

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "ReceleErasers":
        erasers = {}
        for path, channels in zip(config["paths"], config["channels"]):
            net = _eraser(channels, config["rank"])
            net.load_state_dict({n: tensors[f"{path}.{n}"] for n, _ in net.named_parameters()})
            erasers[path] = net
        return cls(erasers, config["rank"])


@dataclass
class ReceleConfig(TrajectoryConfig):
    rank: int = field(default=128, metadata={"help": "hidden width of each eraser", "min": 1})
    reg_weight: float = field(default=0.1, metadata={"help": "λ of the concept-localised regularisation"})
    adv_warmup: int = field(default=0, metadata={"help": "iterations before the adversarial prompts start"})
    adv_every: int = field(default=1, metadata={"help": "run the inner attack every N iterations (0: never)"})
    adv_steps: int = field(default=50, metadata={"help": "Adam steps of each inner attack"})
    adv_space: str = field(
        default="output", metadata={"help": "output (text-encoder output after the concept, released) or embedding (prefix)"}
    )
    adv_lr: float = field(default=0.1, metadata={"help": "learning rate of the inner attack (released: 0.1)", "gt": 0})
    adv_weight_decay: float = field(default=0.1, metadata={"help": "Adam weight decay of the output-space attack"})
    adv_tokens: int = field(default=16, metadata={"help": "adversarial vectors", "min": 1})
    mask_threshold: float = field(
        default=0.1, metadata={"help": "attention masks: 1 where the normalised map reaches this (0: the soft map)", "max": 1}
    )
    filler: str = field(default="a", metadata={"help": "placeholder word of the embedding-space attack's slots"})
    mask_source: str = field(
        default="auto", metadata={"help": "auto (exact world masks on the testbed, cross-attention elsewhere) or attention"}
    )
    n_images: int = field(default=16, metadata={"help": "testbed renders per concept for the exact-mask regulariser", "min": 1})
    iterations: int = field(default=500, metadata={"help": "optimisation steps", "min": 1})
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the erasers", "gt": 0})

    def validate(self) -> None:
        self.check_trajectory("receler")
        if self.rank < 1 or self.reg_weight < 0 or self.adv_every < 0 or self.n_images < 1 or self.adv_weight_decay < 0:
            raise ConfigError("receler needs rank >= 1, reg_weight >= 0, adv_every >= 0, n_images >= 1, adv_weight_decay >= 0")
        if self.mask_source not in ("auto", "attention"):
            raise ConfigError(f"receler's mask_source must be auto or attention, got {self.mask_source!r}")
        if self.adv_space not in ("output", "embedding"):
            raise ConfigError(f"receler's adv_space must be output or embedding, got {self.adv_space!r}")
        if self.adv_space == "embedding" and self.adv_weight_decay != 0.1:
            raise ConfigError("receler's adv_weight_decay applies to adv_space=output only (drop it)")
        if self.adv_space == "output" and self.filler != "a":
            raise ConfigError("receler's filler applies to adv_space=embedding only (drop it or set adv_space=embedding)")
        if self.lora_rank:
            raise ConfigError("receler trains its own erasers; it has no LoRA form (set lora_rank=0)")


@dataclass
class ExactMasks:
    """World renders of the targets (latents), their exact masks ``[N, H, W]`` and each one's prompt index."""

    latents: torch.Tensor
    masks: torch.Tensor
    prompt_of: list[int]


def _masked_energy(outs: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """``mean_l Σ_{outside} mean_c E_l(h_l)² / #outside`` over the layers' eraser outputs ``[B, HW, C]``
    and masks ``[B, HW]`` (outside = ``1 − M``), the released regulariser."""
    terms = [(o * (1 - m[..., None])).pow(2).mean(-1).sum() / ((1 - m).sum() + 1e-9) for o, m in zip(outs, masks)]
    return torch.stack(terms).mean() if terms else torch.zeros(())


def concept_masks(maps: list[torch.Tensor], latent_side: int, threshold: float) -> list[torch.Tensor]:
    """Receler's mask (``concept_reg.get_mask``) from per-layer maps ``[B, HW]`` (the concept tokens'
    attention, mean over tokens and heads): the layers at the side nearest ``latent_side / 4``
    averaged, min-max normalised per image, 1 where ``≥ threshold`` (the soft map when ``threshold`` is
    0), resized by nearest neighbour to every layer: one ``[B, HW]`` per layer."""
    sides = [int(round(m.shape[1] ** 0.5)) for m in maps]
    level = min(sides, key=lambda side: (abs(side - latent_side / 4), -side))
    chosen = torch.stack([m.view(-1, side, side) for m, side in zip(maps, sides) if side == level]).mean(0)
    low = chosen.amin(dim=(1, 2), keepdim=True)
    high = chosen.amax(dim=(1, 2), keepdim=True)
    mask = (chosen - low) / (high - low).clamp_min(1e-12)
    if threshold > 0:
        mask = (mask >= threshold).to(mask.dtype)
    return [F.interpolate(mask[:, None], size=(side, side), mode="nearest").flatten(1) for side in sides]


class OutputSpaceAdversary:
    """The reference's adversary: ``k`` vectors overwriting the text encoder's output right after the
    concept's tokens (one set per prompt, kept across steps; Adam with weight decay)."""

    def __init__(self, cond, positions: list[list[int]], config: ReceleConfig, gen: torch.Generator):
        length, width = cond.tokens.shape[1:]
        self.slots = []
        for i, pos in enumerate(positions):
            first = max(pos) + 1
            if first + config.adv_tokens > length:
                raise ConfigError(
                    f"receler's {config.adv_tokens} adversarial vectors do not fit after the concept in prompt {i} "
                    f"({length}-token context); lower adv_tokens or shorten the prompt"
                )
            self.slots.append(torch.arange(first, first + config.adv_tokens))
        self.vectors = [torch.rand(config.adv_tokens, width, generator=gen).to(cond.tokens) for _ in positions]
        self.opts = []
        for v in self.vectors:
            v.requires_grad_(True)
            self.opts.append(torch.optim.Adam([v], lr=config.adv_lr, weight_decay=config.adv_weight_decay))
        self.steps = config.adv_steps

    def insert(self, cond, i: int, vectors: torch.Tensor):
        """``cond`` with prompt ``i``'s slots overwritten by ``vectors`` (out of place, differentiable)."""
        tokens = cond.tokens.clone()
        tokens[:, self.slots[i]] = vectors.to(tokens.dtype)
        return type(cond)(tokens, cond.extra)

    def optimise(self, bench: Workbench, cond, i: int, xt, t, target) -> torch.Tensor:
        """``steps`` Adam steps making the erased model's prediction match ``target``; returns the
        adversarial conditioning (detached)."""
        v, opt = self.vectors[i], self.opts[i]
        for _ in range(self.steps):
            loss = F.mse_loss(bench.predict(xt, t, self.insert(cond, i, v)).float(), target.float())
            opt.zero_grad(set_to_none=True)
            v.grad = torch.autograd.grad(loss, [v])[0]
            opt.step()
        return self.insert(cond, i, v.detach())


class ReceleObjective:
    def __init__(self, bench: Workbench, erasers: ReceleErasers, maps: CrossAttentionProbe | None, prompts: list[str], phrases: list[str],
                 config: ReceleConfig, exact: ExactMasks | None = None):  # fmt: skip
        self.bench, self.erasers, self.maps, self.prompts, self.config, self.exact = bench, erasers, maps, prompts, config, exact
        tok = bench.pipe.tokenizer
        self.positions = [concept_positions(tok, p, ph) for p, ph in zip(prompts, phrases)]
        self.cond = bench.cond(prompts)
        self.uncond = bench.cond([""])
        if config.adv_space == "output":
            gen = torch.Generator().manual_seed(config.seed + 53)
            self.adversary: OutputSpaceAdversary | None = OutputSpaceAdversary(self.cond, self.positions, config, gen)
        else:
            self.adversary = None
            self.soft = SoftPrompt(
                bench.pipe, SoftPromptConfig(config.adv_tokens, config.adv_steps, config.adv_lr, config.filler)
            )
            self.adv_positions = [concept_positions(tok, p, ph, offset=config.adv_tokens) for p, ph in zip(prompts, phrases)]

    def attacking(self, step: int) -> bool:
        cfg = self.config
        return bool(cfg.adv_every) and step >= cfg.adv_warmup and (step - cfg.adv_warmup) % cfg.adv_every == 0

    def _mask(self, xt, t, cond, positions) -> list[torch.Tensor]:
        """The frozen model's concept mask at ``x_t`` (erasers off, no gradient), per eraser layer."""
        assert self.maps is not None
        self.erasers.enabled = False
        self.maps.reset([positions])
        try:
            with torch.no_grad():
                self.bench.predict(xt, t, cond)
            maps = self.maps.maps
        finally:
            self.erasers.enabled = True
            self.maps.reset(None)
        return concept_masks(maps, xt.shape[-1], self.config.mask_threshold)

    def _erase_terms(self, xt, t, cond, target, masks) -> tuple[torch.Tensor, torch.Tensor]:
        """ESD term and, with attention masks, the regulariser on the same forward pass (else 0)."""
        if masks is None:
            pred = self.bench.predict(xt, t, cond)
            return F.mse_loss(pred.float(), target.float()), torch.zeros((), device=pred.device)
        self.erasers.capture = []
        pred = self.bench.predict(xt, t, cond)
        outs, self.erasers.capture = self.erasers.capture, None
        return F.mse_loss(pred.float(), target.float()), _masked_energy(outs, [m.to(o) for o, m in zip(outs, masks)])

    def _exact_reg(self, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The regulariser on one noised world render with its exact mask (testbed)."""
        assert self.exact is not None  # called only when the model has exact masks
        j = int(torch.randint(0, len(self.exact.latents), (1,), generator=gen))
        b = self.bench.noised(self.exact.latents[j : j + 1], t, gen)
        self.erasers.capture = []
        self.bench.predict(b.xt, b.t, self.cond.select([self.exact.prompt_of[j]]))
        outs, self.erasers.capture = self.erasers.capture, None
        mask = self.exact.masks[j : j + 1]
        return _masked_energy(outs, [layer_mask(mask.to(o.device, o.dtype), o.shape[1]) for o in outs])

    def _adversarial(self, i: int, cond, xt, t, f_c):
        """The step's adversarial conditioning of prompt ``i`` (see the module docstring)."""
        if self.adversary is not None:
            return self.adversary.optimise(self.bench, cond, i, xt, t, f_c)
        optimise_soft_prompt(self.bench, self.soft, xt, t, [self.prompts[i]], f_c, student=False)
        adv = self.soft.cond(self.bench, [self.prompts[i]])
        return type(adv)(adv.tokens.detach(), adv.extra)

    def loss(self, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, bench = self.config, self.bench
        i = int(torch.randint(0, len(self.prompts), (1,), generator=gen))
        cond = self.cond.select([i])
        pt = esd_point(bench, cond, self.uncond, cfg, gen)
        xt, t, f_c, target = pt.xt, pt.t, pt.f_c, pt.target
        masks = self._mask(xt, t, cond, self.positions[i]) if self.maps is not None else None
        esd, reg = self._erase_terms(xt, t, cond, target, masks)
        if self.exact is not None:
            reg = self._exact_reg(t, gen)
        terms = {"esd": esd, "reg": cfg.reg_weight * reg}
        if self.attacking(step):
            adv_cond = self._adversarial(i, cond, xt, t, f_c)
            # the concept's region does not move with the adversary: the same masks regularise it
            adv, adv_reg = self._erase_terms(xt, t, adv_cond, target, masks)
            terms["esd_adv"] = adv
            terms["reg"] = terms["reg"] + cfg.reg_weight * adv_reg
        return terms


@register_method("receler", ReceleConfig, families=("sd", "sdxl"), kind="adapter", accepts=("checkpoints", "profile"))
def receler(
    pipe,
    request,
    config: ReceleConfig,
    adapter,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    profile=None,
) -> MethodResult:
    """Receler: zero-initialised erasers after each cross-attention, localised and adversarially trained."""
    if adapter.objective != "ddpm":
        raise UnsupportedModelError(f"receler adds erasers after UNet cross-attention; {adapter.name} is not supported")
    pairs = request.prompted_phrases()
    prompts, phrases = [p for p, _ in pairs], [ph for _, ph in pairs]
    with Workbench(pipe, adapter, [adapter.denoiser]) as bench:
        student = bench.student[adapter.denoiser]
        erasers = ReceleErasers.build(student, adapter.denoiser, config.rank)
        handles = erasers.install(PipeView(pipe, bench.student))
        use_exact = config.mask_source == "auto" and profile is not None and profile.has_exact_masks
        exact = _exact_masks(bench, request, prompts, config, profile) if use_exact else None
        maps = None
        if exact is None:
            maps = CrossAttentionProbe(student)
            handles += maps.install()
        try:
            params = erasers.parameters()
            objective = ReceleObjective(bench, erasers, maps, prompts, phrases, config, exact)
            info = {"erasers": len(erasers.erasers), "numel": int(sum(p.numel() for p in params.values())),
                    "masks": "exact (testbed world renders)" if exact is not None else "cross-attention"}  # fmt: skip
            result = fit(bench, params, objective, config.settings(checkpoint_dir, resume), progress, desc="receler", info=info)
        finally:
            for h in handles:
                h.remove()
        return MethodResult(weights={}, info=result.info, attachment=ReceleErasers.restore(erasers.config(), erasers.tensors()))


def _exact_masks(bench: Workbench, request, prompts: list[str], config: ReceleConfig, profile) -> ExactMasks:
    """``n_images`` world renders per target with exact masks; each is run with its target's first prompt."""
    latents, masks, prompt_of = [], [], []
    for ti, t in enumerate(request.targets):
        images, m = profile.concept_renders(t.concept, config.n_images, config.seed + 31 + ti)
        latents.append(bench.encode_images(images))
        masks.append(m)
        prompt_of += [prompts.index(t.phrases()[0])] * len(m)
    return ExactMasks(torch.cat(latents), torch.cat(masks), prompt_of)
