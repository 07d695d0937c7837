"""Evaluation of erasures: prompt sets, metrics (UA / IRA / CRA / fidelity / cost) and the testbed evaluator."""

from erasekit.evaluation.testbed_eval import evaluate_on_testbed

__all__ = ["evaluate_on_testbed"]
