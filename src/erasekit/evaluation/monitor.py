"""Watch a training run on the testbed and stop it once the target is erased (early stopping).

A :class:`TestbedMonitor` is the ``monitor(step, weights) -> (metrics, stop)`` that training methods
accept: it copies the trained tensors into a private copy of the pipeline (the user's pipeline and
the run's student are never touched), generates the evaluation prompts of ``erasekit evaluate``
(the targets' prompts and the other concepts of their domains, fixed seeds), judges them, and
returns the macro-averaged UA / IRA / CRA. ``stop`` is true once UA >= ``stop_ua`` and, when given,
IRA >= ``min_ira``. Its own time is kept in ``eval_seconds`` so that callers can report training
time without it.
"""

from __future__ import annotations

import copy
import time

import torch

from erasekit.core.errors import ConfigError
from erasekit.evaluation.testbed_eval import evaluation_plan, macro, target_metrics


class TestbedMonitor:
    """UA / IRA / CRA of the weights being trained, measured every ``eval_every`` steps (see module)."""

    def __init__(self, pipe, judge, concepts: list[str], seeds: int = 2, contexts: int = 6, stop_ua: float | None = None,
                 min_ira: float | None = None, report=None) -> None:  # fmt: skip
        for name, v in (("stop_ua", stop_ua), ("min_ira", min_ira)):
            if v is not None and not 0 <= v <= 1:
                raise ConfigError(f"{name} must be a share in [0, 1], got {v}")
        if seeds < 1 or contexts < 1:
            raise ConfigError(f"the monitor needs seeds >= 1 and contexts >= 1 (got {seeds}, {contexts})")
        self.pipe = copy.deepcopy(pipe)
        self.judge, self.stop_ua, self.min_ira, self.report = judge, stop_ua, min_ira, report
        self.plan = evaluation_plan(concepts, contexts, seeds)
        self.eval_seconds = 0.0
        self.history: list[dict] = []

    @torch.no_grad()
    def __call__(self, step: int, weights: dict[str, torch.Tensor]) -> tuple[dict, bool]:
        from erasekit.core.erasure import get_tensor

        t0 = time.perf_counter()
        for k, v in weights.items():
            get_tensor(self.pipe, k).copy_(v)
        pred = self.judge.predict(self.plan.generate(self.pipe))
        rows = self.plan.rows
        per = [target_metrics(c, prompts, rows, pred) for c, prompts in self.plan.plans.items()]
        metrics = macro(per, ("ua", "ira", "cra", "ira_neighbours"))
        self.eval_seconds += time.perf_counter() - t0
        metrics["eval_seconds_so_far"] = round(self.eval_seconds, 2)
        stop = (
            self.stop_ua is not None
            and metrics["ua"] >= self.stop_ua
            and (self.min_ira is None or metrics["ira"] >= self.min_ira)
        )
        self.history.append({"step": step, **metrics})
        if self.report is not None:
            self.report(
                f"step {step}: UA {metrics['ua']:.3f} IRA {metrics['ira']:.3f} CRA {metrics['cra']:.3f}"
                + ("  -> target reached, stopping" if stop else "")
            )
        return metrics, stop
