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


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n of ``x``, ties given the mean of the ranks they span (as Spearman's ρ needs)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman_rho(x, y) -> float | None:
    """Spearman's ρ: Pearson's correlation of the average ranks of ``x`` and ``y`` (None if either is constant)."""
    rx, ry = average_ranks(x), average_ranks(y)
    if len(rx) != len(ry):
        raise ValueError(f"spearman_rho needs equal lengths, got {len(rx)} and {len(ry)}")
    dx, dy = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum() / den) if den > 0 else None


def kendall_tau(x, y) -> float | None:
    """Kendall's τ-b: (C − D) / √((C + D + T_x)(C + D + T_y)) over all pairs, with C / D the concordant /
    discordant pairs and T_x / T_y the pairs tied in ``x`` only / ``y`` only (None if either is constant)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"kendall_tau needs equal lengths, got {len(x)} and {len(y)}")
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant_minus_discordant = float((sx * sy).sum())
    n_x, n_y = float((sx != 0).sum()), float((sy != 0).sum())  # pairs not tied in x (resp. y)
    den = math.sqrt(n_x * n_y)
    return concordant_minus_discordant / den if den > 0 else None
