"""Metrics of erasure, retention and fidelity, computed from judge predictions.

Notation: for a target X of domain D, an image *shows X* when the judge's D label is X (for a
character: when every attribute equals the character's).

- UA (unlearning accuracy): share of images from prompts naming X that do not show X;
- IRA (in-domain retention): share of images from prompts naming another concept Y of D that show Y
  (also on X's closest neighbours only);
- CRA (cross-domain retention): accuracy of the domains other than D, on the other concepts' prompts
  (``cra``) and on X's own prompts (``cra_on_target``);
- fidelity: the same prompt and seed before vs after, on the other concepts' prompts: mean absolute
  pixel change (0-1 scale), share of images whose labels all stay equal, and the Fréchet distance
  between the judge's penultimate features of the two image sets.

Every rate comes with its count and a 95 % Wilson interval.
"""

from __future__ import annotations

import numpy as np
import torch

from erasekit.testbeds.image import world
from erasekit.testbeds.image.classifier import LABEL_NAMES

DOMAINS = world.DOMAINS


def labels_of(pred: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Predicted label *names* of ``rows`` for every domain (and the watermark)."""
    return {d: np.array(LABEL_NAMES[d])[pred[d][rows]] for d in (*DOMAINS, "watermark")}


def shows(labels: dict[str, np.ndarray], concept: str, domain: str) -> np.ndarray:
    """Boolean per image: does it show ``concept``?"""
    if domain == "character":
        a = world.CHARACTERS[concept]
        return np.logical_and.reduce([labels[d] == getattr(a, d) for d in DOMAINS])
    if domain == "watermark":
        return labels["watermark"] == "present"
    return labels[domain] == concept


def kernel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """KID (Bińkowski et al. 2018): the unbiased MMD² between feature sets ``a: [m, d]`` and
    ``b: [n, d]`` with the cubic polynomial kernel ``k(x, y) = (x·y / d + 1)³``::

        1/(m(m−1)) Σ_{i≠j} k(a_i, a_j) + 1/(n(n−1)) Σ_{i≠j} k(b_i, b_j) − 2/(mn) Σ_{i,j} k(a_i, b_j)

    (one estimate over all features; it needs at least two of each, and is unbiased, so it can be
    slightly negative for sets from one distribution)."""
    a, b = a.double(), b.double()
    m, n, d = a.shape[0], b.shape[0], a.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least two features in each set, got {m} and {n}")

    def k(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x @ y.T / d + 1) ** 3

    kaa, kbb = k(a, a), k(b, b)
    within = (kaa.sum() - kaa.diagonal().sum()) / (m * (m - 1)) + (kbb.sum() - kbb.diagonal().sum()) / (n * (n - 1))
    return float(within - 2 * k(a, b).mean())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a, b: [n, f]``."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)

    def sqrtm(m: torch.Tensor) -> torch.Tensor:
        vals, vecs = torch.linalg.eigh((m + m.T) / 2)
        return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T

    root_a = sqrtm(ca)
    cross = sqrtm(root_a @ cb @ root_a)
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(ca + cb - 2 * cross))
