"""Fine-tuning support shared by every training method: one loop (engine.py), the diffusion arithmetic
and the frozen teacher (diffusion.py), LoRA outputs (lora.py), and :func:`fit`, which ties them to the
method API.

A method builds a :class:`~erasekit.training.diffusion.Workbench`, writes its loss as an
:class:`~erasekit.training.engine.Objective` over the workbench's student, and calls :func:`fit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult
from erasekit.training.diffusion import ImageBank, NoisedBatch, Workbench
from erasekit.training.engine import Objective, TrainingSettings, TrainLog, step_generator, train
from erasekit.training.lora import add_lora, lora_state_dict

ESD_SETS = {"esd-x": "xattn", "esd-u": "noxattn", "esd-x-strict": "xattn-kv"}


def parameter_spec(name: str):
    """``esd-x`` / ``esd-u`` / ``esd-x-strict``, an engine set name, or ``re:<regex>,<regex>``."""
    if name.startswith("re:"):
        patterns = [p for p in name[3:].split(",") if p]
        if not patterns:
            raise ConfigError("train_method 're:' needs at least one regex, e.g. re:attn2\\.to_v")
        return patterns
    return ESD_SETS.get(name, name)


@dataclass
class TrainingConfig(MethodConfig):
    """Options every training method has (a method's config dataclass inherits them)."""

    iterations: int = field(default=200, metadata={"help": "optimisation steps", "min": 1})
    lr: float = field(default=1e-5, metadata={"help": "learning rate", "gt": 0})
    seed: int = field(default=0, metadata={"help": "seed of every random draw of the run"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per step (gradient accumulation)", "min": 1})
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA), no, bf16 or fp16"})
    checkpoint_every: int = field(
        default=0, metadata={"help": "with a checkpoint directory: save every N steps (0: every tenth of the run)"}
    )
    lora_rank: int = field(
        default=0, metadata={"help": "train a LoRA of this rank on the parameter set instead of the weights (0: off)"}
    )

    eval_every: int = field(
        default=0,
        metadata={"help": "with a monitor (early stopping, benchmarks): evaluate every N steps (0: every tenth of the run)"},
    )

    def settings(self, checkpoint_dir: str | None, resume: bool, **overrides) -> TrainingSettings:
        """The loop's settings from this config; ``overrides`` (optimizer, weight_decay, grad_clip, lr...)
        replace the defaults a method does not take from the shared fields."""
        every = (self.checkpoint_every or max(1, self.iterations // 10)) if checkpoint_dir else 0
        fields = dict(steps=self.iterations, lr=self.lr, seed=self.seed, grad_accum=self.grad_accum, mixed_precision=self.mixed_precision,
                      checkpoint_every=every, checkpoint_dir=checkpoint_dir, resume=resume, eval_every=self.eval_every)  # fmt: skip
        s = TrainingSettings(**{**fields, **overrides})
        s.validate()
        return s


@dataclass
class TrajectoryConfig(TrainingConfig):
    """Options of methods that train on the frozen model's own sampling trajectories (ESD and kin)."""

    negative_guidance: float = field(
        default=2.0,
        metadata={"help": "η of the target f*(c) − η (f*(c) − f*(∅)); 2 gives the references' 2 f*(∅) − f*(c)"},
    )
    start_guidance: float = field(default=3.0, metadata={"help": "guidance of the frozen model's partial denoising"})
    ddim_steps: int = field(default=50, metadata={"help": "sampler steps of the partial denoising", "min": 1})
    size: int | None = field(default=None, metadata={"help": "latent size for training (default: the model's)", "min": 1})

    def check_trajectory(self, name: str) -> None:
        if self.ddim_steps < 1 or self.iterations < 1 or self.lr <= 0:
            raise ConfigError(f"{name} needs ddim_steps and iterations >= 1 and lr > 0")


@dataclass
class EsdPoint:
    """A point of the frozen model's trajectory and the ESD target there."""

    xt: torch.Tensor
    t: torch.Tensor
    f_c: torch.Tensor  # f*(x_t, c, t)
    target: torch.Tensor  # f*(x_t, c) − η (f*(x_t, c) − f*(x_t, ∅)); η = 2: 2 f*(∅) − f*(c)


def esd_point(
    bench: Workbench, cond, uncond, config: TrajectoryConfig, gen: torch.Generator, stop: int | None = None
) -> EsdPoint:
    """Partially denoise with the frozen model (a random stop in ``[0, ddim_steps)`` unless given) and
    build the ESD target at the timestep reached."""
    if stop is None:
        stop = int(torch.randint(0, config.ddim_steps, (1,), generator=gen))
    if uncond.tokens.shape[0] != cond.tokens.shape[0]:
        uncond = uncond.select(torch.zeros(cond.tokens.shape[0], dtype=torch.long))
    xt, t = bench.partial_denoise(cond, uncond, config.ddim_steps, stop, config.start_guidance, gen, size=config.size)
    with torch.no_grad():
        f_c = bench.teacher_predict(xt, t, cond)
        target = f_c - config.negative_guidance * (f_c - bench.teacher_predict(xt, t, uncond))
    return EsdPoint(xt, t, f_c, target)


def trainable_parameters(bench: Workbench, spec, lora_rank: int) -> tuple[dict[str, torch.nn.Parameter], dict]:
    """The parameters a run optimises: the set ``spec`` itself, or a LoRA on it when ``lora_rank``."""
    params = bench.trainable(spec)
    if not lora_rank:
        return params, {"parameters": len(params), "numel": int(sum(p.numel() for p in params.values()))}
    lora_params, skipped = {}, []
    for component, module in bench.student.items():
        keys = [k for k in params if k.startswith(component + ".")]
        if keys:
            got, left = add_lora(module, component, keys, lora_rank)
            lora_params.update(got)
            skipped += left
    info = {"lora_rank": lora_rank, "parameters": len(lora_params), "numel": int(sum(p.numel() for p in lora_params.values()))}
    if skipped:
        info["lora_skipped_non_linear"] = len(skipped)
    return lora_params, info


def fit(
    bench: Workbench,
    params: dict[str, torch.nn.Parameter],
    objective: Objective,
    settings: TrainingSettings,
    progress: bool,
    desc: str,
    info: dict | None = None,
    lora: bool = False,
    monitor=None,
    **train_kwargs,
) -> MethodResult:
    """Train, then package the student's new weights (or its LoRA) as a :class:`MethodResult`.

    ``monitor(step, weights) -> (metrics, stop)`` is called every ``settings.eval_every`` steps and at
    the end with the current trained tensors (detached); ``stop=True`` ends training early.
    """
    if monitor is not None:
        if lora:
            raise ConfigError(
                "a training monitor (early stopping) measures the trained weights themselves; drop --lora-rank to use one"
            )
        if not settings.eval_every:
            settings = replace(settings, eval_every=max(1, settings.steps // 10))
        train_kwargs["evaluate"] = lambda step: monitor(step, {k: p.detach() for k, p in params.items()})
    log: TrainLog = train(params, objective, settings, progress=progress, desc=desc, **train_kwargs)
    info = dict(info or {}, training=log.summary())
    if lora:
        return MethodResult(weights={}, info=info, lora=lora_state_dict(bench.student))
    weights = {k: p.detach().to("cpu").clone() for k, p in params.items()}
    return MethodResult(weights=weights, info=info)


def top_share_mask(scores: dict[str, torch.Tensor], share: float) -> dict[str, torch.Tensor]:
    """0/1 masks keeping the global top ``share`` of ``scores`` (one threshold across all tensors)."""
    if not 0 < share <= 1:
        raise ConfigError(f"mask share must be in (0, 1], got {share}")
    flat = torch.cat([g.flatten().float() for g in scores.values()])
    keep = max(1, int(round(share * flat.numel())))
    threshold = torch.topk(flat, keep, sorted=False).values.min()
    return {k: (g >= threshold).to(g.dtype) for k, g in scores.items()}


def target_prompts(request) -> list[str]:
    """Every prompt that names a target: each concept and synonym, expanded with the request's templates."""
    prompts = [p for p, _ in request.prompted_phrases()]
    if not prompts:
        raise ConfigError("the request has no target prompt")
    return prompts


__all__ = [
    "EsdPoint",
    "ImageBank",
    "NoisedBatch",
    "Objective",
    "TrainLog",
    "TrainingConfig",
    "TrainingSettings",
    "TrajectoryConfig",
    "Workbench",
    "esd_point",
    "fit",
    "parameter_spec",
    "step_generator",
    "target_prompts",
    "top_share_mask",
    "train",
    "trainable_parameters",
]
