"""What only a testbed model offers methods: renders of a concept with its exact pixel mask.

Mask-based methods (MACE's attention loss, Receler's localised regularisation) derive a concept's
region from cross-attention on real models; on the testbed the world generator knows it exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from erasekit.testbeds.image import world


def concept_renders(phrase: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` world renders showing ``phrase`` and their exact masks (``uint8 [n,32,32,3]``, ``float [n,32,32]``).

    The mask is the concept's region: the shape's silhouette (shape, style, colour, character), the
    rest of the image (background), or the mark's 5x5 corner (watermark). Other attributes are random.
    """
    from erasekit.testbeds.image.world import resolve_concept

    concept, domain = resolve_concept(phrase)
    rng = np.random.default_rng(seed)
    labels = world.sample_labels(n, rng)
    if domain == "character":
        attrs = world.CHARACTERS[concept]
        for d in world.DOMAINS:
            getattr(labels, d)[:] = world.value_index(d, getattr(attrs, d))
    elif domain == "watermark":
        getattr(labels, world.WATERMARK.domain)[:] = world.value_index(world.WATERMARK.domain, world.WATERMARK.value)
        labels.watermark[:] = True
    else:
        getattr(labels, domain)[:] = world.value_index(domain, concept)
    images, masks = world.render(labels, rng)
    if domain == "background":
        masks = 1.0 - masks
    if domain == "watermark":
        masks = np.zeros_like(masks)
        r0, c0 = world.WATERMARK_ORIGIN
        masks[:, r0 : r0 + 5, c0 : c0 + 5] = 1.0
    return torch.from_numpy(images), torch.from_numpy(masks).float()
