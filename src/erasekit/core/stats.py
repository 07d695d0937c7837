"""Small statistics shared by the gate, the metrics and the reports."""

from __future__ import annotations

import math

import numpy as np


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of the rate k/n ((0, 1) when n = 0)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def rate(hits) -> dict:
    """``{"rate", "n", "ci95"}`` of a boolean array (rate None when empty)."""
    hits = np.asarray(hits, dtype=bool)
    k, n = int(hits.sum()), int(hits.size)
    lo, hi = wilson(k, n)
    return {"rate": (k / n) if n else None, "n": n, "ci95": [round(lo, 4), round(hi, 4)]}
