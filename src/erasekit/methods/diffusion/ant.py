"""ANT — "Set You Straight: Auto-Steering Denoising Trajectories to Sidestep Unwanted Concepts"
(Li et al., ACM MM 2025; lileyang1210/ANT).

Keeps the concept's classifier-free-guidance direction during the early (high-noise) sampler steps,
where the layout forms, and reverses it in the mid-to-late steps, where the concept's content is
drawn. One trajectory point ``z⁺`` from the first ``before_step`` of ``ddim_steps`` frozen-model
steps and one ``z⁻`` from the rest (both with guidance ``start_guidance``, timesteps = those reached):

    L₁ = ‖ f_θ(z⁺, c) − [f*(z⁺, ∅) + η (f*(z⁺, c) − f*(z⁺, ∅))] ‖²     (keep the direction, early)
    L₃ = ‖ f_θ(z⁻, c) − [f*(z⁻, ∅) − η (f*(z⁻, c) − f*(z⁻, ∅))] ‖²     (reverse it, late)
    L₂ = ‖ f_θ(z⁺, ∅) − f*(z⁺, ∅) ‖²,  L₄ = ‖ f_θ(z⁻, ∅) − f*(z⁻, ∅) ‖²  (unconditional preservation)
    L  = L₃ + α₂ L₄ + α₁ (L₁ + α₂ L₂)

with gradients multiplied by a saliency mask made as released (lileyang1210/ANT@78ce8f3:
``Single/train-scripts/train_ant_single.py`` with ``if_gradient``, then ``generate_mask.py``):

1. ``mask_runs`` short runs (5 seeds), each from the original weights: ``mask_iterations`` (10) steps
   of the same loss with Adam at ``mask_lr`` (1e-2) that *update* the weights, summing the *signed*
   gradients ``g = Σ_steps ∇L``;
2. per run and **per tensor**, rank ``|g|`` and keep ``mask_ratio`` (0.5) of the elements;
3. intersect the runs' masks (a weight stays trainable only where every run kept it).

Which half is kept is a deliberate choice: the released ``generate_mask.py`` keeps the elements of
*lowest* ``|g|`` (ascending ``argsort``, ``ranks < int(0.5 n)``), while the paper speaks of the
weights most salient to the concept. ``mask_side="lowest"`` (default) follows the released code that
produced the published numbers; ``mask_side="top"`` keeps the most salient half. Measured on the
testbed (star, the table's settings): see ``ant-star-mask-top`` in benchmarks/results/testbed_checks.json.

Defaults follow the reference: the full UNet, 250 iterations, Adam lr 5e-4, ``before_step`` 7 of 50
DDIM steps, α₁ 1, α₂ 0.5, η 1. Deliberate fixes of the reference: L₂ and L₄ are computed *with*
gradient (the reference computes f_θ(·, ∅) under ``no_grad``, so they do nothing); trajectories are
sampled with the frozen model, and each loss uses the timestep its trajectory reached (the reference
maps step indices to DDPM timesteps counting from the wrong end).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult, register_method
from erasekit.training import (
    TrajectoryConfig,
    Workbench,
    fit,
    parameter_spec,
    step_generator,
    target_prompts,
    trainable_parameters,
)


@dataclass
class ANTConfig(TrajectoryConfig):
    train_method: str = field(default="full", metadata={"help": "parameter set the saliency mask is taken over"})
    negative_guidance: float = field(default=1.0, metadata={"help": "η of ANT's targets f*(∅) ± η (f*(c) − f*(∅))"})
    before_step: int = field(default=7, metadata={"help": "sampler steps counted as early (direction kept)"})
    alpha_1: float = field(default=1.0, metadata={"help": "α₁, weight of the early terms"})
    alpha_2: float = field(default=0.5, metadata={"help": "α₂, weight of the unconditional-preservation terms"})
    mask_ratio: float = field(
        default=0.5, metadata={"help": "share of parameters kept trainable (1: no mask)", "gt": 0, "max": 1}
    )
    mask_runs: int = field(default=5, metadata={"help": "gradient runs (seeds) whose masks are intersected", "min": 1})
    mask_iterations: int = field(default=10, metadata={"help": "steps of each gradient run (they update the weights)", "min": 1})
    mask_lr: float = field(default=1e-2, metadata={"help": "Adam learning rate of the gradient runs", "gt": 0})
    mask_side: str = field(
        default="lowest", metadata={"help": "which |Σ∇| each tensor keeps: lowest (released generate_mask.py) or top (salient)"}
    )
    iterations: int = field(default=250, metadata={"help": "optimisation steps", "min": 1})
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate", "gt": 0})

    def validate(self) -> None:
        if not 0 < self.before_step < self.ddim_steps:
            raise ConfigError(f"ant needs 0 < before_step < ddim_steps (got {self.before_step}, {self.ddim_steps})")
        if not 0 < self.mask_ratio <= 1 or min(self.mask_runs, self.mask_iterations, self.iterations) < 1:
            raise ConfigError("ant needs mask_ratio in (0, 1], mask_runs, mask_iterations and iterations >= 1")
        if self.lr <= 0 or self.mask_lr <= 0:
            raise ConfigError("ant needs lr > 0 and mask_lr > 0")
        if self.mask_side not in ("lowest", "top"):
            raise ConfigError(f"ant's mask_side must be lowest or top, got {self.mask_side!r}")
        unused = (self.mask_runs, self.mask_iterations, self.mask_lr, self.mask_side) != (5, 10, 1e-2, "lowest")
        if self.mask_ratio == 1 and unused:
            raise ConfigError(
                "ant's mask_runs, mask_iterations, mask_lr and mask_side build the saliency mask; mask_ratio=1 has none"
            )


class ANTObjective:
    def __init__(self, bench: Workbench, prompts: list[str], config: ANTConfig):
        self.bench, self.prompts, self.config = bench, prompts, config
        self.cond = bench.cond(prompts)
        self.uncond = bench.cond([""])

    def loss(self, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, bench = self.config, self.bench
        i = int(torch.randint(0, len(self.prompts), (1,), generator=gen))
        cond, uncond = self.cond.select([i]), self.uncond
        early = int(torch.randint(0, cfg.before_step, (1,), generator=gen))
        late = int(torch.randint(cfg.before_step, cfg.ddim_steps, (1,), generator=gen))
        noise_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        terms = {}
        for name, stop, sign in (("keep", early, 1.0), ("reverse", late, -1.0)):
            # both points lie on the same trajectory (the same initial noise), as in the reference
            z, t = bench.partial_denoise(
                cond, uncond, cfg.ddim_steps, stop, cfg.start_guidance, torch.Generator().manual_seed(noise_seed), size=cfg.size
            )
            with torch.no_grad():
                f_c, f_u = bench.teacher_predict(z, t, cond), bench.teacher_predict(z, t, uncond)
            target = f_u + sign * cfg.negative_guidance * (f_c - f_u)
            direction = F.mse_loss(bench.predict(z, t, cond).float(), target.float())
            preserve = F.mse_loss(bench.predict(z, t, uncond).float(), f_u.float())
            if name == "keep":
                terms["keep"] = cfg.alpha_1 * direction
                terms["uncond_early"] = cfg.alpha_1 * cfg.alpha_2 * preserve
            else:
                terms["reverse"] = direction
                terms["uncond_late"] = cfg.alpha_2 * preserve
        return terms


def gradient_mask(params: dict, objective: ANTObjective, config: ANTConfig) -> dict[str, torch.Tensor]:
    """The released mask (see the module docstring): per run, ``mask_iterations`` Adam steps from the
    original weights summing signed gradients; per tensor, the ``mask_ratio`` share of ``|Σ∇|`` on
    ``mask_side``; the runs' masks intersected. The weights are restored after every run."""
    original = {k: p.detach().clone() for k, p in params.items()}
    mask = {k: torch.ones_like(p) for k, p in params.items()}
    for run in range(config.mask_runs):
        sums = {k: torch.zeros_like(p) for k, p in params.items()}
        opt = torch.optim.Adam(list(params.values()), lr=config.mask_lr)
        for i in range(config.mask_iterations):
            total = torch.stack(list(objective.loss(i, step_generator(config.seed + 202 + 7919 * run, i)).values())).sum()
            grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
            for (k, p), g in zip(params.items(), grads):
                p.grad = g
                if g is not None:
                    sums[k] += g
            opt.step()
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(original[k])
                p.grad = None
                mask[k] *= per_tensor_share(sums[k].abs(), config.mask_ratio, config.mask_side == "top")
    return mask


def per_tensor_share(score: torch.Tensor, share: float, top: bool) -> torch.Tensor:
    """0/1 mask of one tensor keeping ``int(share · n)`` elements by rank of ``score``: the lowest
    (``generate_mask.py``: ``ranks < int(n · share)`` of an ascending ``argsort``) or the highest."""
    flat = score.flatten().float()
    keep = int(flat.numel() * share)
    ranks = torch.argsort(torch.argsort(flat, descending=top))
    return (ranks < keep).reshape(score.shape).to(score.dtype)


@register_method("ant", ANTConfig, families=("sd", "sdxl", "sd3", "flux"), kind="fine-tuning", accepts=("checkpoints", "monitor"))
def ant(
    pipe,
    request,
    config: ANTConfig,
    adapter,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    monitor=None,
) -> MethodResult:
    """ANT: keep the guidance direction early, reverse it late, saliency-masked (all terms with gradient)."""
    spec = parameter_spec(config.train_method)
    with Workbench.for_parameters(pipe, adapter, spec) as bench:
        if bench.trains_text:
            raise ConfigError("ant trains the denoiser; choose a denoiser parameter set")
        params, info = trainable_parameters(bench, spec, config.lora_rank)
        objective = ANTObjective(bench, target_prompts(request), config)
        mask = None
        if config.mask_ratio < 1:
            if config.lora_rank:
                raise ConfigError("ant's saliency mask applies to weights, not to a LoRA; set mask_ratio=1 with lora_rank")
            mask = gradient_mask(params, objective, config)
            info["mask_kept"] = float(sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values()))
        settings = config.settings(checkpoint_dir, resume)
        return fit(
            bench,
            params,
            objective,
            settings,
            progress,
            desc="ant",
            info=info,
            grad_mask=mask,
            lora=bool(config.lora_rank),
            monitor=monitor,
        )
