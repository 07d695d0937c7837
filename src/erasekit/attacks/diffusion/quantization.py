"""Quantization: does an erasure survive the weight quantization users apply to deploy a model?

Erasures whose weight updates are small against a quantizer's bin width can be undone by rounding
(Zhang et al. 2024, "Catastrophic Failure of LLM Unlearning via Quantization": updates 47–828x below
the NF4 bin). The attacked model's denoiser and text encoders are quantized with ``optimum-quanto``
(weight-only, symmetric per-channel int8; int4 in groups, quanto's defaults), then asked the plain
prompts. An erasure that adds modules (SPM's and Receler's adapters) is attached again after the
model is quantized, in its own precision, as adapters are deployed (QLoRA-style); replacing the
model's linear layers must not silently drop it. Each budget unit adds one format, in order
``int8``, ``int4``. What it found: the format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from erasekit.attacks.base import AttackConfig
from erasekit.core.registry import register_attack

FORMATS = ("int8", "int4")


@dataclass
class QuantizationConfig(AttackConfig):
    budget: int = field(default=2, metadata={"help": "formats tried (1: int8, 2: int8 then int4)", "max": 2})


def quantized(arena, fmt: str):
    """A copy of the attacked pipeline with its denoiser and text encoders' weights quantized to
    ``fmt`` (an adapter erasure is attached again after quantizing, in its own precision)."""
    from optimum.quanto import freeze, qint4, qint8, quantize

    def transform(clone) -> None:
        for name in arena.adapter.trainable_components(clone):
            module = getattr(clone, name)
            quantize(module, weights={"int8": qint8, "int4": qint4}[fmt])
            freeze(module)

    return arena.weights_copy(transform=transform)


@register_attack("quantization", QuantizationConfig, budget_unit="formats", kind="weights", fast=True)
def quantization(arena, config: QuantizationConfig, tracker, progress: bool = True) -> dict:
    """Plain prompts on the erased model with its weights quantized to int8, then int4 (optimum-quanto)."""
    for k, fmt in enumerate(FORMATS[: config.budget], start=1):
        rows = tracker.pending()
        if not rows:
            break
        other = arena.variant(quantized(arena, fmt))
        tracker.report(k, rows, other.generate_trials(rows), [{"prompt": arena.trials[r].prompt, "weights": fmt} for r in rows])
    return {}
