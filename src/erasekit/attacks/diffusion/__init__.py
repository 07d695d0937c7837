"""Attacks on erased diffusion pipelines, one module each, registered by name; the shared parts:
:mod:`.arena` (attacked model, reference model, judge, sampling), :mod:`.tokens` (discrete and
continuous prompt variables), :mod:`.variants` (rewordings). The soft-prompt module is also the
inner attack of AdvUnlearn and Receler."""

from erasekit.attacks.diffusion import (  # noqa: F401  (each module registers its attack)
    arithmetic,
    embeddings,
    latent_inversion,
    p4d,
    quantization,
    relearning,
    ring_a_bell,
    synonyms,
    token_search,
    unlearndiffatk,
)
