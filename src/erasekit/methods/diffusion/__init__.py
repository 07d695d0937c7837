"""Methods that erase concepts from diffusion pipelines (families sd, sdxl, sd3, flux), one module
each; importing this package registers them."""

from erasekit.methods.diffusion import (  # noqa: F401  (each module registers its method)
    ablating,
    advunlearn,
    ant,
    concept_steerers,
    esd,
    leace_prompt,
    mace,
    negative_prompt,
    rece,
    receler,
    saeuron,
    safety_filter,
    safree,
    salun,
    sld,
    speed,
    spm,
    te_unlearn,
    time,
    uce,
)
