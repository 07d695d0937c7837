"""LoRA outputs of fine-tuning methods: a peft LoRA on the Linear layers of a parameter set.

The adapter is injected with peft (``r = lora_alpha = rank``, so its scale is 1 and the merged
weight is exactly ``W + B A``), trained by the same loop, and exported in the diffusers LoRA format:
keys ``<component>.<module path>.lora_A.weight`` / ``.lora_B.weight`` in
``pytorch_lora_weights.safetensors``, which ``pipe.load_lora_weights(dir)`` reads. LoRA covers the
``nn.Linear`` layers of the set; convolutions in it (ESD-u's resnets) are left out and reported.
"""

from __future__ import annotations

import torch
from torch import nn

from erasekit.core.erasure import LORA_FILE, lora_deltas  # noqa: F401  (re-exported for methods)
from erasekit.core.errors import ConfigError


def add_lora(module: nn.Module, component: str, keys: list[str], rank: int) -> tuple[dict[str, nn.Parameter], list[str]]:
    """Inject a rank-``rank`` LoRA into the Linear layers of ``module`` whose ``<component>.<path>.weight`` is in ``keys``.

    Returns the LoRA parameters (keyed ``component.path``) and the keys left out (non-Linear layers).
    Every other parameter of ``module`` is frozen.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ConfigError(f"lora_rank must be at least 1, got {rank}")
    wanted = {k[len(component) + 1 : -len(".weight")] for k in keys if k.startswith(component + ".") and k.endswith(".weight")}
    linear = sorted(n for n, m in module.named_modules() if n in wanted and isinstance(m, nn.Linear))
    skipped = sorted(k for k in keys if k.startswith(component + ".") and k[len(component) + 1 :].rsplit(".", 1)[0] not in linear)
    if not linear:
        raise ConfigError(f"the parameter set has no Linear layer in {component} to put a LoRA on")
    for p in module.parameters():
        p.requires_grad_(False)
    # Exact module names: peft matches a target when the name equals it or ends with "." + it.
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=linear, lora_dropout=0.0), module)
    params = {f"{component}.{n}": p for n, p in module.named_parameters() if ".lora_" in n}
    for p in params.values():
        p.requires_grad_(True)
    return params, skipped


def lora_state_dict(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The diffusers-format LoRA tensors (``component.path.lora_A.weight`` ...) of peft-injected ``modules``."""
    out: dict[str, torch.Tensor] = {}
    for component, module in modules.items():
        for name, p in module.named_parameters():
            if ".lora_A.default." in name or ".lora_B.default." in name:
                out[f"{component}.{name.replace('.default.', '.')}"] = p.detach().to("cpu").contiguous().clone()
    return out
