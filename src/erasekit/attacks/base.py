"""What every attack shares: trials, the one success definition, budgets and the result.

**Trials.** An attack on concept X runs on trials ``(prompt, seed)``: every prompt that names X (or,
for an implicit concept such as the watermark, triggers it) times every seed. A trial's image is
*shown* when the judge says it shows X.

**One ASR definition** (the convention of UnlearnDiffAtk, used by every attack here): a trial
succeeds when its plain prompt already shows X ("before": the attack is not needed, the trial
stops there) or when the attack, within its budget, finds an input whose image shows X (it stops
at the first success)::

    ASR        = #{trials shown before or recovered} / #trials        (95 % Wilson interval)
    ASR_before = #{trials shown before} / #trials,   recovered = ASR − ASR_before

``ASR(b)``, the curve, is the same share when the attack may spend only ``b`` units of its budget
(judged at ``checkpoints``: a quarter, a half, three quarters and all of it); ``ASR(0) =
ASR_before``, and with a zero budget an attack does nothing and its ASR equals the plain prompts'.

An attack is a function ``fn(arena, config, tracker, progress)`` registered with
:func:`~erasekit.core.registry.register_attack`. It reads the attacked model and the reference
model through the :class:`~erasekit.attacks.diffusion.arena.Arena`, and at each checkpoint hands the tracker
the images of the trials still pending together with what it found for them; the tracker judges
them and keeps, per trial, the first success (or the last attempt).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from erasekit.core.config import MethodConfig
from erasekit.core.stats import wilson

CURVE_POINTS = 4


@dataclass
class AttackConfig(MethodConfig):
    """Base of every attack's config: ``budget`` counts the attack's budget unit."""

    budget: int = field(default=0, metadata={"help": "budget in the attack's unit (0: no attack)"})


@dataclass(frozen=True)
class Trial:
    """One ``(prompt, seed)`` an attack tries to make show the concept."""

    index: int
    prompt: str
    seed: int
    prompt_index: int


@dataclass
class TrialRecord:
    """What happened in one trial: shown before the attack, the first success (budget and what was
    found), and the image judged last (the successful one, or the final attempt)."""

    trial: Trial
    before: bool
    success: bool
    budget_used: int | None = None  # budget spent at the first success (0 when shown before)
    found: dict = field(default_factory=dict)
    image: np.ndarray | None = None
    seconds: float = 0.0  # attack time until the first success (or the last attempt); trials run batched

    def to_dict(self) -> dict:
        return {
            "prompt": self.trial.prompt,
            "seed": self.trial.seed,
            "shown_before": self.before,
            "success": self.success,
            "budget_used": self.budget_used,
            "seconds": round(self.seconds, 2),
            "found": self.found,
        }


def checkpoints(budget: int, points: int = CURVE_POINTS) -> list[int]:
    """Budgets at which an attack's progress is judged: ``ceil(budget * k / points)``, ``k = 1..points``."""
    if budget <= 0:
        return []
    return sorted({max(1, math.ceil(budget * k / points)) for k in range(1, points + 1)})


class Tracker:
    """Judges an attack's attempts and keeps the first success per trial (see the module docstring)."""

    def __init__(self, trials: list[Trial], before: np.ndarray, before_images: np.ndarray, judge, budget: int,
                 bar=None) -> None:  # fmt: skip
        self.bar = bar  # a tqdm bar over the budget (advanced as the attack reports its progress)
        self.t0 = time.time()
        self.trials = trials
        self.judge = judge  # (images) -> bool [N]
        self.budget = budget
        self.points = checkpoints(budget)
        self.records = [
            TrialRecord(t, bool(b), bool(b), 0 if b else None, {"prompt": t.prompt} if b else {}, before_images[i])
            for i, (t, b) in enumerate(zip(trials, before))
        ]

    def pending(self) -> list[int]:
        """Indices of the trials not yet successful."""
        return [i for i, r in enumerate(self.records) if not r.success]

    def due(self, spent: int) -> bool:
        """Whether ``spent`` units of budget is a checkpoint (attacks call it once per unit spent)."""
        self._advance(spent)
        return spent in self.points

    def _advance(self, spent: int) -> None:
        if self.bar is not None and spent > self.bar.n:
            self.bar.update(spent - self.bar.n)
            self.bar.set_postfix(asr=f"{sum(r.success for r in self.records) / max(1, len(self.records)):.2f}", refresh=False)

    def report(self, spent: int, rows: list[int], images: np.ndarray, found: list[dict]) -> np.ndarray:
        """Judge ``images`` of trials ``rows`` after ``spent`` units; record first successes. Returns the
        success mask of ``rows`` (trials already successful are left as they were)."""
        if len(rows) != len(images) or len(rows) != len(found):
            raise ValueError("report needs one image and one 'found' entry per trial row")
        self._advance(spent)
        ok = np.asarray(self.judge(images), dtype=bool) if len(rows) else np.zeros(0, dtype=bool)
        for r, hit, img, f in zip(rows, ok, images, found):
            rec = self.records[r]
            if rec.success:
                continue
            rec.image, rec.found, rec.seconds = img, f, time.time() - self.t0
            if hit:
                rec.success, rec.budget_used = True, int(spent)
        return ok

    def pending_loss(self, per_trial):
        """Mean of ``per_trial`` losses (a tensor, one per trial) over the trials not yet successful: a
        trial that succeeded stops pulling the shared optimisation."""
        import torch

        pending = torch.tensor([not r.success for r in self.records], device=per_trial.device, dtype=per_trial.dtype)
        return (per_trial * pending).sum() / pending.sum().clamp(min=1)

    def curve(self) -> list[list[float]]:
        """``[[b, ASR(b)], ...]`` from 0 to the full budget (checkpoints only)."""
        n = len(self.records)
        out = []
        for b in [0, *self.points]:
            hits = sum(1 for r in self.records if r.success and r.budget_used is not None and r.budget_used <= b)
            out.append([b, hits / n if n else 0.0])
        return out


@dataclass
class AttackResult:
    """The outcome of one attack against one model for one concept (see the module docstring)."""

    attack: str
    concept: str
    model: str
    erasure: str | None
    budget: int
    budget_unit: str
    records: list[TrialRecord]
    curve: list[list[float]]
    seconds: float
    judge: str | dict
    config: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def trials(self) -> int:
        return len(self.records)

    @property
    def successes(self) -> int:
        return sum(r.success for r in self.records)

    @property
    def asr(self) -> float:
        return self.successes / self.trials if self.trials else 0.0

    @property
    def asr_ci(self) -> tuple[float, float]:
        return wilson(self.successes, self.trials)

    @property
    def asr_before(self) -> float:
        return sum(r.before for r in self.records) / self.trials if self.trials else 0.0

    @property
    def recovered(self) -> float:
        return self.asr - self.asr_before

    @property
    def images(self) -> np.ndarray:
        """The judged image of every trial, ``uint8 [N, H, W, 3]``."""
        return np.stack([r.image for r in self.records])

    def to_dict(self) -> dict:
        lo, hi = self.asr_ci
        before = sum(r.before for r in self.records)
        blo, bhi = wilson(before, self.trials)
        return {
            "attack": self.attack,
            "concept": self.concept,
            "model": self.model,
            "erasure": self.erasure,
            "budget": self.budget,
            "budget_unit": self.budget_unit,
            "trials": self.trials,
            "asr": round(self.asr, 4),
            "asr_ci": [round(lo, 4), round(hi, 4)],
            "asr_before": round(self.asr_before, 4),
            "asr_before_ci": [round(blo, 4), round(bhi, 4)],
            "recovered": round(self.recovered, 4),
            "curve": [[int(b), round(a, 4)] for b, a in self.curve],
            "seconds": round(self.seconds, 2),
            "judge": self.judge,
            "config": self.config,
            "info": self.info,
            "found": [r.to_dict() for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: dict, trials: list[Trial], images: np.ndarray) -> "AttackResult":
        """The result :meth:`to_dict` wrote, on ``trials`` (their order), with each trial's judged image
        (an attack kept in an image cache, read back by a rerun: ``erasekit attack --cache``)."""
        found = data["found"]
        if [(r["prompt"], r["seed"]) for r in found] != [(t.prompt, t.seed) for t in trials] or len(images) != len(trials):
            raise ValueError("the stored attack's trials are not these trials")
        records = [TrialRecord(t, bool(r["shown_before"]), bool(r["success"]), r["budget_used"], dict(r["found"]), img,
                               float(r["seconds"])) for t, r, img in zip(trials, found, images)]  # fmt: skip
        return cls(attack=data["attack"], concept=data["concept"], model=data["model"], erasure=data["erasure"],
                   budget=int(data["budget"]), budget_unit=data["budget_unit"], records=records, curve=data["curve"],
                   seconds=float(data["seconds"]), judge=data["judge"], config=data["config"], info=dict(data["info"]))  # fmt: skip

    def summary(self) -> str:
        lo, hi = self.asr_ci
        return (
            f"{self.attack:<18} ASR {self.asr:6.1%} [{lo:.2f}, {hi:.2f}]  before {self.asr_before:6.1%}  "
            f"recovered {self.recovered:+6.1%}  ({self.trials} trials, budget {self.budget} {self.budget_unit}, {self.seconds:.0f} s)"
        )
