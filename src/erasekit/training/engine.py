"""The one training loop every fine-tuning method uses, on diffusion pipelines and language models.

A method supplies an :class:`Objective`: which parameters train (a dict from parameter-set keys to
parameters), how a step's loss is computed (named terms whose sum is minimised), and optionally a
gradient mask (SalUn, ANT) and extra state to checkpoint (AdvUnlearn's adversarial prompt). The loop
owns everything else: the optimiser, steps, linear warm-up, gradient accumulation (a fixed number of
micro-batches, or as many as a :class:`BatchedObjective` has at that step: the language-model side's
epochs over a forget set), gradient clipping, mixed precision on accelerators, seeding, the progress
bar with the loss, periodic checkpoints with ``resume``, early stopping on a metric, and the refusals
of a run that cannot be right: a loss that does not reach the trained parameters, a step in which
no parameter receives a gradient, and a loss that is NaN or infinite.

Determinism: step ``k`` draws its randomness from a generator seeded with ``(seed, k)``, so a run
resumed from a checkpoint at step ``k`` continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from erasekit.core.errors import ConfigError, ErasekitError, NonFiniteError
from erasekit.core.outputs import claim_collection
from erasekit.training import checkpoints

LR_SCHEDULES = ("constant", "linear", "cosine")


class Objective(Protocol):
    def loss(self, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The named loss terms of step ``step``; the loop minimises the sum of the tensors (a plain
        number among them is only logged: a part of a total the objective already formed)."""
        ...


class BatchedObjective(Protocol):
    """An objective whose steps have their own number of micro-batches (epochs over a data set
    whose last step is short): the loop calls ``loss(step, gen, micro)`` for ``micro`` in
    ``range(micro_batches(step))`` and averages them."""

    def micro_batches(self, step: int) -> int: ...

    def loss(self, step: int, gen: torch.Generator, micro: int) -> dict[str, torch.Tensor | float]: ...


@dataclass
class TrainingSettings:
    """How the loop runs (methods fill these from their configs)."""

    steps: int
    lr: float
    optimizer: str = "adam"  # "adam" or "adamw"
    weight_decay: float = 0.0
    grad_accum: int = 1
    grad_clip: float | None = None
    warmup_steps: int = 0  # lr_k = lr · k / warmup_steps for k < warmup_steps (transformers' warm-up)
    lr_schedule: str = "constant"  # after the warm-up: constant, linear (to 0 at the end) or cosine (lr_factor)
    seed: int = 0
    mixed_precision: str = "auto"  # "auto" (bf16 on CUDA, off elsewhere), "no", "bf16", "fp16"
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    resume: bool = False
    eval_every: int = 0

    def validate(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.steps < 1 or self.lr <= 0 or self.grad_accum < 1 or self.warmup_steps < 0:
            raise ConfigError(
                f"training needs steps >= 1, lr > 0, grad_accum >= 1 and warmup_steps >= 0 "
                f"(got {self.steps}, {self.lr}, {self.grad_accum}, {self.warmup_steps})"
            )
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; use adam or adamw")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"mixed_precision must be auto, no, bf16 or fp16 (got {self.mixed_precision!r})")
        if (self.checkpoint_every or self.resume) and not self.checkpoint_dir:
            raise ConfigError("checkpoints and resume need a checkpoint directory")


@dataclass
class TrainLog:
    """What happened: per-step loss terms, evaluations, time, and whether it stopped early."""

    losses: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    steps_run: int = 0
    start_step: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    def summary(self) -> dict:
        def mean(part: list[dict[str, float]]) -> dict[str, float]:
            return {k: sum(d.get(k, 0.0) for d in part) / len(part) for k in part[0]} if part else {}

        n = max(1, min(20, len(self.losses) // 4))
        return {"steps_run": self.steps_run, "start_step": self.start_step, "initial_loss": mean(self.losses[:n]),
                "final_loss": mean(self.losses[-n:]), "stopped_early": self.stopped_early,
                "seconds": round(self.seconds, 3), "evaluations": self.evaluations}  # fmt: skip


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of step ``step``: independent of how many steps ran before (exact resume)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _autocast(device: torch.device, mode: str):
    if mode == "no" or (mode == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()  # full precision (also on devices autocast does not know)
    if mode == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def train(
    params: dict[str, nn.Parameter],
    objective: Objective,
    settings: TrainingSettings,
    progress: bool = True,
    desc: str = "train",
    grad_mask: dict[str, torch.Tensor] | None = None,
    evaluate: Callable[[int], tuple[dict, bool]] | None = None,
    extra_state: dict[str, torch.Tensor] | None = None,
) -> TrainLog:
    """Minimise ``objective`` over ``params`` for ``settings.steps`` steps.

    ``grad_mask[key]`` multiplies that parameter's gradient before every update (saliency masks).
    ``evaluate(step) -> (metrics, stop)`` runs every ``settings.eval_every`` steps and after the last;
    ``stop=True`` ends training early. ``extra_state``: tensors the objective updates in place that a
    checkpoint must carry (restored in place on resume).
    """
    settings.validate()
    if not params:
        raise ConfigError("nothing to train: the parameter set is empty")
    names = sorted(params)
    plist = [params[k] for k in names]
    device = plist[0].device
    opt_cls = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(plist, lr=settings.lr, weight_decay=settings.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if settings.mixed_precision == "fp16" and device.type == "cuda" else None
    log = TrainLog()
    ckpt = Path(settings.checkpoint_dir) if settings.checkpoint_dir else None
    start = 0
    if ckpt is not None:
        claim_collection(ckpt, "checkpoints", what="checkpoint directory")
        if settings.resume:
            start = _load_checkpoint(ckpt, params, opt, extra_state, log, settings)
    log.start_step = start
    t0 = time.perf_counter()
    bar = tqdm(range(start, settings.steps), desc=desc, disable=not progress, initial=start, total=settings.steps, mininterval=1)
    for step in bar:
        _set_lr(opt, settings, step)
        terms_sum = _accumulate(objective, opt, settings, step, device, scaler, desc)
        if all(p.grad is None for p in plist):
            raise ErasekitError(f"{desc}: no trained parameter received a gradient at step {step} (a silent no-op)")
        _update(opt, params, plist, settings, scaler, grad_mask)
        log.losses.append(terms_sum)
        log.steps_run += 1
        bar.set_postfix({k: f"{v:.4g}" for k, v in terms_sum.items()}, refresh=False)
        if ckpt is not None and _due(settings.checkpoint_every, step, settings.steps, False):
            _save_checkpoint(ckpt, step + 1, params, opt, extra_state, log, settings)
        if evaluate is not None and _due(settings.eval_every, step, settings.steps, True):
            metrics, stop = evaluate(step + 1)
            log.evaluations.append({"step": step + 1, "seconds": round(time.perf_counter() - t0, 3), **metrics})
            if stop and step + 1 < settings.steps:
                log.stopped_early = True
                break
    log.seconds = time.perf_counter() - t0
    return log


def _due(every: int, step: int, steps: int, always_last: bool) -> bool:
    """Whether a periodic action falls after step ``step``: every ``every`` steps and after the last
    one; with ``every == 0`` only after the last (``always_last``: evaluations) or never (checkpoints)."""
    last = step + 1 == steps
    if not every:
        return always_last and last
    return (step + 1) % every == 0 or last


def lr_factor(schedule: str, step: int, steps: int, warmup: int) -> float:
    """The learning-rate multiplier at optimiser step ``step`` (0-based) of ``steps``, as transformers'
    ``get_scheduler`` computes it (``constant_with_warmup``, ``linear``, ``cosine``): ``step / warmup``
    during the ``warmup`` first steps (0 at the very first), then with ``p = (step − warmup) /
    max(1, steps − warmup)``: ``1`` (constant), ``max(0, 1 − p)`` (linear, 0 after the last step) or
    ``max(0, (1 + cos(π p)) / 2)`` (cosine)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, steps - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return 1.0


def _set_lr(opt, settings: TrainingSettings, step: int) -> None:
    """Every parameter group's lr at ``step``: ``settings.lr · lr_factor(...)``."""
    factor = lr_factor(settings.lr_schedule, step, settings.steps, settings.warmup_steps)
    for group in opt.param_groups:
        group["lr"] = settings.lr * factor


def _accumulate(objective, opt, settings: TrainingSettings, step: int, device, scaler, desc: str) -> dict[str, float]:
    """Zero the gradients, then back-propagate the mean of step ``step``'s micro-batch losses
    (``grad_accum`` of them, or as many as a :class:`BatchedObjective` has); the mean of each term."""
    opt.zero_grad(set_to_none=True)
    batched = hasattr(objective, "micro_batches")
    micros = objective.micro_batches(step) if batched else settings.grad_accum
    terms_sum: dict[str, float] = {}
    for micro in range(micros):
        gen = step_generator(settings.seed, step * settings.grad_accum + micro)
        with _autocast(device, settings.mixed_precision):
            terms = objective.loss(step, gen, micro) if batched else objective.loss(step, gen)
        total = _minimised(terms, desc) / micros
        if not bool(torch.isfinite(total.detach())):
            raise NonFiniteError(
                f"{desc}: the loss became {float(total.detach()) * micros} at step {step}; lower the learning rate (lr)"
            )
        (scaler.scale(total) if scaler else total).backward()
        for k, v in terms.items():
            terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v) / micros
    return terms_sum


def _update(opt, params: dict, plist: list, settings: TrainingSettings, scaler, grad_mask) -> None:
    """One optimiser step: unscale (fp16), mask the gradients (saliency), clip their norm, step."""
    if scaler:
        scaler.unscale_(opt)
    if grad_mask is not None:
        for k, m in grad_mask.items():
            if params[k].grad is not None:
                params[k].grad.mul_(m)
    if settings.grad_clip:
        torch.nn.utils.clip_grad_norm_(plist, settings.grad_clip)
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()


def _minimised(terms: dict, desc: str) -> torch.Tensor:
    """The sum of the tensor terms (the number the step minimises); an error when it cannot train."""
    tensors = [v for v in terms.values() if isinstance(v, torch.Tensor)]
    if not tensors:
        raise ConfigError(f"{desc}: the objective returned no loss tensor")
    total = sum(tensors[1:], tensors[0])
    if not total.requires_grad:
        raise ConfigError(f"{desc}: the loss does not depend on the trained parameters (a silent no-op)")
    return total


def _fingerprint(settings: TrainingSettings) -> dict:
    d = asdict(settings)
    for k in ("checkpoint_dir", "resume", "checkpoint_every", "eval_every"):
        d.pop(k)
    return d


def _save_checkpoint(ckpt: Path, step: int, params, opt, extra_state, log: TrainLog, settings: TrainingSettings) -> None:
    tensors = {f"param.{k}": v for k, v in params.items()}
    tensors.update({f"extra.{k}": v for k, v in (extra_state or {}).items()})
    checkpoints.save(
        ckpt, step, tensors, opt, {"settings": _fingerprint(settings), "losses": log.losses, "evaluations": log.evaluations}
    )


@torch.no_grad()
def _load_checkpoint(ckpt: Path, params, opt, extra_state, log: TrainLog, settings: TrainingSettings) -> int:
    """Restore the newest checkpoint in ``ckpt`` into ``params``, ``opt`` and ``extra_state``; its step (0: none)."""
    found = checkpoints.load_latest(ckpt, opt)
    if found is None:
        return 0
    step, tensors, state = found
    if state.get("settings") != json.loads(json.dumps(_fingerprint(settings))):
        raise ConfigError(
            f"the checkpoint in {ckpt} was made with other training settings; drop --resume to start over, or match them to resume"
        )
    for k, p in params.items():
        if f"param.{k}" not in tensors or tensors[f"param.{k}"].shape != p.shape:
            raise ConfigError(
                f"the checkpoint in {ckpt} lacks {k} (or has another shape); it belongs to another method or parameter set"
            )
        p.copy_(tensors[f"param.{k}"].to(p))
    for k, v in (extra_state or {}).items():
        if f"extra.{k}" not in tensors:
            raise ConfigError(f"the checkpoint in {ckpt} lacks the state {k}; it belongs to another method")
        v.copy_(tensors[f"extra.{k}"].to(v))
    log.losses = list(state.get("losses", []))
    log.evaluations = list(state.get("evaluations", []))
    return step
