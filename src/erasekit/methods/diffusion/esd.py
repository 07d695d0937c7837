"""ESD — Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023; rohitgandikota/erasing).

Fine-tunes the denoiser so that, conditioned on the concept ``c``, it predicts what the frozen model
predicts when guided *away* from ``c``:

    L = ‖ f_θ(x_t, c, t) − [ f*(x_t, c, t) − η (f*(x_t, c, t) − f*(x_t, ∅, t)) ] ‖²

``f*`` is the frozen original model, ``x_t`` comes from partially denoising pure noise with ``c``
(guidance ``start_guidance``) with the *frozen* model for a random number of the ``ddim_steps`` sampler
steps, and ``t`` is the timestep that partial trajectory actually reached. The CompVis code is off by
a little: its sampler's ``till_T = k`` stops with ``k`` steps left, so the latent sits at
``ddim_timesteps[k − 2] ≈ 20k − 39`` while the UNet is queried at a ``t`` drawn from ``[20k, 20k + 20)``
(``train-esd.py``), about 40–60 DDPM steps apart; erasekit queries at ``timesteps[stop]`` exactly.

Parameter sets (``train_method``): ``esd-x`` = cross-attention (attn2), ``esd-u`` = everything but
cross-attention, time embedding and output layers, ``esd-x-strict`` = cross-attention to_k/to_v only;
any set name of the training engine, or ``re:<regex>,<regex>`` is accepted too. ``esd-u`` is the
paper's set, as the CompVis ``train-esd.py`` selects it (every parameter but names starting ``out.``
or containing ``attn2`` / ``time_embed``: norms trained, time embedding and output conv frozen). The
later diffusers rewrite (``esd_sd.py``) trains every Linear/Conv2d outside attn2 instead (time
embedding and ``conv_out`` included, norms excluded); erasekit keeps the set the published results
used.

Defaults follow the current diffusers-based reference script: 200 iterations, Adam lr 5e-5, η = 2,
50 DDIM steps, start guidance 3. The stop step is drawn uniformly from ``[0, ddim_steps)``, as the
reference's ``random.randint(0, 49)``. ESD erases towards the unconditional prediction, so a
target's anchor is not used. On SD3 / Flux the same loss is written on velocities (an affine
combination with weights summing to one means the same thing for ε, v and flow targets) and the
sampler is the pipeline's flow-matching Euler schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult, register_method
from erasekit.training import TrajectoryConfig, Workbench, esd_point, fit, parameter_spec, target_prompts, trainable_parameters


@dataclass
class ESDConfig(TrajectoryConfig):
    train_method: str = field(
        default="esd-x", metadata={"help": "esd-x, esd-u, esd-x-strict, a parameter set, or re:<regex>,..."}
    )
    negative_guidance: float = field(default=2.0, metadata={"help": "η, how far past the unconditional prediction to push"})
    batch_size: int = field(default=1, metadata={"help": "trajectories per step", "min": 1})
    iterations: int = field(default=200, metadata={"help": "optimisation steps", "min": 1})
    lr: float = field(default=5e-5, metadata={"help": "Adam learning rate", "gt": 0})

    def validate(self) -> None:
        self.check_trajectory("esd")
        if self.batch_size < 1:
            raise ConfigError("esd needs batch_size >= 1")


class ESDObjective:
    """The ESD loss on trajectories of the frozen model (see the module docstring)."""

    def __init__(self, bench: Workbench, prompts: list[str], config: ESDConfig):
        self.bench, self.config = bench, config
        self.prompts = prompts
        self.cond = bench.cond(prompts)
        self.uncond = bench.cond([""])

    def loss(self, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, bench = self.config, self.bench
        idx = torch.randint(0, len(self.prompts), (cfg.batch_size,), generator=gen)
        cond = self.cond.select(idx)
        pt = esd_point(bench, cond, self.uncond, cfg, gen)
        pred = bench.predict(pt.xt, pt.t, bench.student_cond([self.prompts[i] for i in idx], frozen=cond))
        return {"esd": F.mse_loss(pred.float(), pt.target.float())}


@register_method("esd", ESDConfig, families=("sd", "sdxl", "sd3", "flux"), kind="fine-tuning", accepts=("checkpoints", "monitor"))
def esd(
    pipe,
    request,
    config: ESDConfig,
    adapter,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    monitor=None,
) -> MethodResult:
    """ESD: fine-tune so the concept's prediction points away from it (ESD-x / ESD-u / ESD-x-strict)."""
    spec = parameter_spec(config.train_method)
    with Workbench.for_parameters(pipe, adapter, spec) as bench:
        params, info = trainable_parameters(bench, spec, config.lora_rank)
        objective = ESDObjective(bench, target_prompts(request), config)
        settings = config.settings(checkpoint_dir, resume)
        info["train_method"] = config.train_method
        return fit(
            bench, params, objective, settings, progress, desc="esd", info=info, lora=bool(config.lora_rank), monitor=monitor
        )
