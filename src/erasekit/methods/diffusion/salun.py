"""SalUn — saliency unlearning (Fan et al., ICLR 2024; OPTML-Group/Unlearn-Saliency), for diffusion.

1. Saliency mask: the gradient of the guided forget loss on images of the concept,

       L_f = ‖ ε − [(1 + w) f(x_t, c_f) − w f(x_t, ∅)] ‖²   (w = 7.5, the reference's guidance form),

   its gradient summed over ``mask_batches`` batches; the mask keeps the global top ``mask_ratio``
   share of ``|Σ ∇θ L_f|`` (the magnitude of the summed gradient, not the sum of magnitudes) over the
   whole parameter set (one threshold for all tensors), as in the reference.
2. Masked training (gradients multiplied by the mask before every update):

       L = ‖ f_θ(x_t^f, c_f) − sg f_θ(x_t^f, c_pseudo) ‖² + α ‖ f_θ(x_t^r, c_r) − target ‖²

   forget images ``x^f`` with the concept prompt are mapped to the prediction for a pseudo prompt, and
   the denoising loss on retain images (drawn from the preserved concepts, or the anchor when none is
   given) keeps the rest. The pseudo prompt is, as in the reference, *another class's* caption: the
   target's anchor when it has one, else the preserved concepts in turn, else ``default_anchor``
   (``pseudo="anchor"`` skips the preserved concepts).

Images are drawn once by the frozen model. Defaults: mask ratio 0.5, w 7.5, α 0.1, Adam lr 1e-5,
200 steps, the whole denoiser (``full``; the reference masks the full UNet). The reference walks its
data loader once per epoch (5 epochs of batch 8, its mask from a full pass over the forget set, α 0.5
in its README's run); we draw a fresh random batch every step (the mask from ``mask_batches`` batches).
The
empty prompt enters the guided mask loss only as the unconditional branch (a port used the concept
prompt there, which zeroes the guidance term).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult, register_method
from erasekit.models.diffusion.base import Conditioning
from erasekit.training import (
    ImageBank,
    TrainingConfig,
    Workbench,
    fit,
    parameter_spec,
    step_generator,
    top_share_mask,
    trainable_parameters,
)


@dataclass
class SalUnConfig(TrainingConfig):
    train_method: str = field(default="full", metadata={"help": "parameter set the mask is taken over"})
    mask_ratio: float = field(
        default=0.5, metadata={"help": "share of parameters kept trainable (global top |grad|)", "gt": 0, "max": 1}
    )
    mask_guidance: float = field(default=7.5, metadata={"help": "w of the guided forget loss that builds the mask"})
    mask_batches: int = field(default=4, metadata={"help": "batches the mask's gradient is accumulated over", "min": 1})
    alpha: float = field(default=0.1, metadata={"help": "weight of the retain (denoising) loss"})
    default_anchor: str = field(
        default="", metadata={"help": "pseudo prompt for targets without an anchor or preserved concepts"}
    )
    pseudo: str = field(
        default="preserved",
        metadata={"help": "pseudo prompt of a target without anchor: preserved (another class, the reference) or anchor"},
    )
    n_images: int = field(default=16, metadata={"help": "images drawn per forget / retain prompt", "min": 1})
    sample_steps: int = field(default=20, metadata={"help": "sampler steps for the images", "min": 1})
    sample_guidance: float = field(default=6.0, metadata={"help": "guidance for the images"})
    batch_size: int = field(default=4, metadata={"help": "images per step (each of forget and retain)", "min": 1})
    size: int | None = field(default=None, metadata={"help": "latent size (default: the model's)", "min": 1})
    iterations: int = field(default=200, metadata={"help": "optimisation steps", "min": 1})
    lr: float = field(default=1e-5, metadata={"help": "Adam learning rate", "gt": 0})

    def validate(self) -> None:
        if self.pseudo not in ("preserved", "anchor"):
            raise ConfigError(f"salun's pseudo must be preserved or anchor, got {self.pseudo!r}")
        if not 0 < self.mask_ratio <= 1:
            raise ConfigError(f"salun mask_ratio must be in (0, 1], got {self.mask_ratio}")
        if (
            min(self.n_images, self.sample_steps, self.batch_size, self.iterations, self.mask_batches) < 1
            or self.lr <= 0
            or self.alpha < 0
        ):
            raise ConfigError("salun needs n_images, sample_steps, batch_size, iterations, mask_batches >= 1, lr > 0, alpha >= 0")


def forget_retain_prompts(request, default_anchor: str, pseudo_from: str = "preserved") -> tuple[list[str], list[str], list[str]]:
    """(forget prompts, their pseudo prompts, retain prompts); retain defaults to the anchors. A target
    without an anchor takes the preserved concepts in turn as its pseudo prompt (another class)."""
    forget, pseudo = [], []
    others = list(request.preserve) if pseudo_from == "preserved" else []
    for i, t in enumerate(request.targets):
        anchor = t.anchor if t.anchor is not None else others[i % len(others)] if others else default_anchor
        for phrase in t.phrases():
            prompts = request.expand(phrase)
            for prompt, anchor_prompt in zip(prompts, request.expand(anchor) if anchor else [""] * len(prompts)):
                forget.append(prompt)
                pseudo.append(anchor_prompt)
    retain = request.preserve_prompts() or sorted({p for p in pseudo if p}) or ["a picture"]
    return forget, pseudo, retain


def saliency_mask(bench: Workbench, params: dict, bank: ImageBank, config: SalUnConfig) -> dict[str, torch.Tensor]:
    """Global top-``mask_ratio`` share of ``|Σ_batches ∇ L_f|`` (the guided forget loss), as {key: 0/1 mask}."""
    grads = {k: torch.zeros_like(p) for k, p in params.items()}
    uncond1 = bench.cond([""])
    for i in range(config.mask_batches):
        gen = step_generator(config.seed + 101, i)
        b, which = bank.batch(bench, config.batch_size, gen)
        cond = bank.cond.select(which)
        uncond = uncond1.select(torch.zeros(len(which), dtype=torch.long))
        f_c = bench.predict(b.xt, b.t, cond)
        f_u = bench.predict(b.xt, b.t, uncond)
        guided = (1 + config.mask_guidance) * f_c - config.mask_guidance * f_u
        loss = F.mse_loss(guided.float(), bench.target(b).float())
        for k, g in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
            if g is not None:
                grads[k] += g
    return top_share_mask({k: g.abs() for k, g in grads.items()}, config.mask_ratio)


class SalUnObjective:
    def __init__(self, bench: Workbench, forget: ImageBank, pseudo_cond: Conditioning, retain: ImageBank, config: SalUnConfig):
        self.bench, self.forget, self.pseudo, self.retain, self.config = bench, forget, pseudo_cond, retain, config

    def loss(self, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, bench = self.config, self.bench
        b, which = self.forget.batch(bench, cfg.batch_size, gen)
        with torch.no_grad():
            target = bench.predict(b.xt, b.t, self.pseudo.select(which))
        terms = {"forget": F.mse_loss(bench.predict(b.xt, b.t, self.forget.cond.select(which)).float(), target.float())}
        r, rw = self.retain.batch(bench, cfg.batch_size, gen)
        terms["retain"] = cfg.alpha * F.mse_loss(
            bench.predict(r.xt, r.t, self.retain.cond.select(rw)).float(), bench.target(r).float()
        )
        return terms


@register_method(
    "salun", SalUnConfig, families=("sd", "sdxl", "sd3", "flux"), kind="fine-tuning", accepts=("checkpoints", "monitor")
)
def salun(
    pipe,
    request,
    config: SalUnConfig,
    adapter,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    monitor=None,
) -> MethodResult:
    """SalUn: a gradient-saliency mask, then masked forget-to-pseudo-prompt training with a retain loss."""
    if config.lora_rank:
        raise ConfigError("salun trains a saliency-masked subset of the weights; it has no LoRA form (set lora_rank=0)")
    spec = parameter_spec(config.train_method)
    with Workbench.for_parameters(pipe, adapter, spec) as bench:
        return _salun(bench, spec, request, config, progress, checkpoint_dir, resume, monitor)


def _salun(
    bench: Workbench, spec, request, config: SalUnConfig, progress: bool, checkpoint_dir, resume, monitor=None
) -> MethodResult:
    if bench.trains_text:
        raise ConfigError("salun trains the denoiser; choose a denoiser parameter set (full, xattn, noxattn ...)")
    params, info = trainable_parameters(bench, spec, 0)
    forget_prompts, pseudo_prompts, retain_prompts = forget_retain_prompts(request, config.default_anchor, config.pseudo)
    gen = torch.Generator().manual_seed(config.seed + 7)
    forget, retain = (
        ImageBank.draw(
            bench,
            prompts,
            n=config.n_images,
            steps=config.sample_steps,
            guidance=config.sample_guidance,
            gen=gen,
            size=config.size,
        )  # fmt: skip
        for prompts in (forget_prompts, retain_prompts)
    )
    mask = saliency_mask(bench, params, forget, config)
    info["mask_kept"] = float(sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values()))
    objective = SalUnObjective(bench, forget, bench.cond(pseudo_prompts), retain, config)
    settings = config.settings(checkpoint_dir, resume)
    return fit(bench, params, objective, settings, progress, desc="salun", info=info, grad_mask=mask, monitor=monitor)
