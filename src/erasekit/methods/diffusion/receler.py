"""Receler — Reliable Concept Erasing via Lightweight Erasers (Huang et al., ECCV 2024).

A small eraser after every cross-attention layer of the UNet: ``h ← h + E_l(h)``, ``E_l = Linear(C, r)
→ GELU → Linear(r, C)`` with the last layer zero-initialised (the model is unchanged at step 0). The
UNet itself stays frozen; only the erasers train, with

    L = ‖ f_E(x_t, c) − [f*(x_t, c) − η (f*(x_t, c) − f*(x_t, ∅))] ‖²  +  λ Σ_l mean ‖ E_l(h_l) ⊙ (1 − M_l) ‖²

(the ESD loss plus concept-localised regularisation: eraser output outside the concept's region
``M_l`` is penalised). ``M_l`` is the cross-attention map of the concept's tokens in layer ``l`` (mean
over heads, normalised to a maximum of 1 per image, then 1 where it exceeds ``mask_threshold`` 0.1 as in
the reference), computed in the same forward pass. After
``adv_warmup`` iterations, every ``adv_every`` iterations an inner soft-prompt attack
(``attacks/diffusion/soft_prompt.py``) finds token vectors that make the erased model draw the concept again,
and the ESD loss is also applied to that adversarial prompt. Our insertion is out-of-place, so it
really changes the embedding that reaches the UNet (the reference writes through ``.data`` with
advanced indexing, a silent no-op).

The target is the reference's ``f*(∅) − η_ref (f*(c) − f*(∅))`` with η_ref = 1, i.e. ``2 f*(∅) − f*(c)``:
η = 2 in the ESD form above (the default).

Defaults: rank 128, λ 0.1, mask threshold 0.1 and an inner attack of 16 token vectors / 50 Adam steps
as in the reference; η 2 (see above), 500 iterations, Adam lr 3e-4, the attack every 10 iterations
after 100 are our choices (the notes are silent). The eraser
is an attachment, not a weight change: ``Erasure.apply`` hooks it in, ``remove`` takes it off, and
``erasekit export`` refuses it (a plain diffusers pipeline cannot hold it).

Masks: on real models ``M_l`` is the cross-attention map above, on the ESD trajectory point. On the
testbed (``mask_source=auto``) the regulariser uses exact masks instead: each step it also noises one
of ``n_images`` world renders of the concept (at the step's timestep), runs it with the concept's
prompt, and penalises eraser output outside the render's exact region (area-downsampled to each
layer's resolution); ``mask_source=attention`` keeps cross-attention masks on the testbed too.
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
    adv_warmup: int = field(default=100, metadata={"help": "iterations before the adversarial prompts start"})
    adv_every: int = field(default=10, metadata={"help": "run the inner attack every N iterations (0: never)"})
    adv_steps: int = field(default=50, metadata={"help": "Adam steps of each inner attack"})
    adv_lr: float = field(default=1e-3, metadata={"help": "learning rate of the inner attack", "gt": 0})
    adv_tokens: int = field(default=16, metadata={"help": "adversarial token vectors", "min": 1})
    mask_threshold: float = field(
        default=0.1, metadata={"help": "attention masks: 1 where the normalised map exceeds this (0: the soft map)", "max": 1}
    )
    filler: str = field(default="a", metadata={"help": "placeholder word whose embedding slots the vectors take"})
    mask_source: str = field(
        default="auto", metadata={"help": "auto (exact world masks on the testbed, cross-attention elsewhere) or attention"}
    )
    n_images: int = field(default=16, metadata={"help": "testbed renders per concept for the exact-mask regulariser", "min": 1})
    iterations: int = field(default=500, metadata={"help": "optimisation steps", "min": 1})
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the erasers", "gt": 0})

    def validate(self) -> None:
        self.check_trajectory("receler")
        if self.rank < 1 or self.reg_weight < 0 or self.adv_every < 0 or self.n_images < 1:
            raise ConfigError("receler needs rank >= 1, reg_weight >= 0, adv_every >= 0 and n_images >= 1")
        if self.mask_source not in ("auto", "attention"):
            raise ConfigError(f"receler's mask_source must be auto or attention, got {self.mask_source!r}")
        if self.lora_rank:
            raise ConfigError("receler trains its own erasers; it has no LoRA form (set lora_rank=0)")


@dataclass
class ExactMasks:
    """World renders of the targets (latents), their exact masks ``[N, H, W]`` and each one's prompt index."""

    latents: torch.Tensor
    masks: torch.Tensor
    prompt_of: list[int]


def _masked_energy(outs: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """``mean_l mean ‖E_l(h_l) ⊙ (1 − M_l)‖²`` over the layers' eraser outputs ``[B, HW, C]`` and masks ``[B, HW]``."""
    return sum((o * (1 - m[..., None])).pow(2).mean() for o, m in zip(outs, masks)) / max(1, len(outs))


class ReceleObjective:
    def __init__(self, bench: Workbench, erasers: ReceleErasers, maps: CrossAttentionProbe | None, prompts: list[str], phrases: list[str],
                 config: ReceleConfig, exact: ExactMasks | None = None):  # fmt: skip
        self.bench, self.erasers, self.maps, self.prompts, self.config, self.exact = bench, erasers, maps, prompts, config, exact
        tok = bench.pipe.tokenizer
        self.positions = [concept_positions(tok, p, ph) for p, ph in zip(prompts, phrases)]
        self.adv_positions = [concept_positions(tok, p, ph, offset=config.adv_tokens) for p, ph in zip(prompts, phrases)]
        self.cond = bench.cond(prompts)
        self.uncond = bench.cond([""])
        self.soft = SoftPrompt(bench.pipe, SoftPromptConfig(config.adv_tokens, config.adv_steps, config.adv_lr, config.filler))

    def attacking(self, step: int) -> bool:
        cfg = self.config
        return bool(cfg.adv_every) and step >= cfg.adv_warmup and (step - cfg.adv_warmup) % cfg.adv_every == 0

    def _erase_terms(self, xt, t, cond, positions, target) -> tuple[torch.Tensor, torch.Tensor]:
        """ESD term and, with attention masks, the regulariser on the same forward pass (else 0)."""
        if self.maps is None:
            pred = self.bench.predict(xt, t, cond)
            return F.mse_loss(pred.float(), target.float()), torch.zeros((), device=pred.device)
        self.erasers.capture = []
        self.maps.reset([positions])
        pred = self.bench.predict(xt, t, cond)
        outs, masks = self.erasers.capture, self.maps.maps
        if self.config.mask_threshold > 0:  # the reference binarises the normalised map at 0.1
            masks = [(m > self.config.mask_threshold).to(m.dtype) for m in masks]
        self.erasers.capture = None
        self.maps.reset(None)
        return F.mse_loss(pred.float(), target.float()), _masked_energy(outs, masks)

    def _exact_reg(self, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The regulariser on one noised world render with its exact mask (testbed)."""
        assert self.exact is not None  # called only when the model has exact masks
        j = int(torch.randint(0, len(self.exact.latents), (1,), generator=gen))
        b = self.bench.noised(self.exact.latents[j : j + 1], t, gen)
        self.erasers.capture = []
        self.bench.predict(b.xt, b.t, self.cond.select([self.exact.prompt_of[j]]))
        outs, self.erasers.capture = self.erasers.capture, None
        mask = self.exact.masks[j : j + 1].to(outs[0].device, outs[0].dtype) if outs else None
        return _masked_energy(outs, [layer_mask(mask, o.shape[1]) for o in outs])

    def loss(self, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, bench = self.config, self.bench
        i = int(torch.randint(0, len(self.prompts), (1,), generator=gen))
        cond = self.cond.select([i])
        pt = esd_point(bench, cond, self.uncond, cfg, gen)
        xt, t, f_c, target = pt.xt, pt.t, pt.f_c, pt.target
        esd, reg = self._erase_terms(xt, t, cond, self.positions[i], target)
        if self.exact is not None:
            reg = self._exact_reg(t, gen)
        terms = {"esd": esd, "reg": cfg.reg_weight * reg}
        if self.attacking(step):
            optimise_soft_prompt(bench, self.soft, xt, t, [self.prompts[i]], f_c, student=False)
            adv_cond = self.soft.cond(bench, [self.prompts[i]])
            adv_cond = type(adv_cond)(adv_cond.tokens.detach(), adv_cond.extra)
            adv, adv_reg = self._erase_terms(xt, t, adv_cond, self.adv_positions[i], target)
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
