"""Quantization attack (Zhang et al. 2024, "Catastrophic failure of LLM unlearning via
quantization"): round the unlearned model's weights to 8 and then 4 bits and ask again. Unlearning
by small weight updates (GA, NPO...) can fall inside one quantization bin of the original weights, so
rounding snaps the model back to what it knew.

Round-to-nearest, symmetric, per group of ``group_size`` input weights of every linear map inside
the transformer blocks (``nn.Linear`` and GPT-2's ``Conv1D``): ``w_q = s · clamp(round(w / s),
−2^{b−1}, 2^{b−1} − 1)``, ``s = max|w| / (2^{b−1} − 1)`` per group (RTN, the baseline of GPTQ/AWQ
with their default group of 128). Embeddings and the output head keep full precision. Budget unit
= precisions tried: 1 = int8, 2 = int8 then int4. Attachments of the erasure (guards, LEACE) stay
installed on the quantized copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erasekit.attacks.base import AttackConfig, Tracker
from erasekit.attacks.lm.arena import FactArena, answer_items
from erasekit.core.registry import register_attack

BITS = (8, 4)


@dataclass
class QuantizationConfig(AttackConfig):
    budget: int = field(default=2, metadata={"help": "precisions tried: 1 = int8, 2 = int8 then int4", "max": len(BITS)})
    group_size: int = field(default=128, metadata={"help": "input weights sharing one scale", "min": 1})


def quantize_weight(w: torch.Tensor, bits: int, group_size: int, transposed: bool = False) -> torch.Tensor:
    """RTN quantization of a 2-D weight (``[out, in]``, or ``[in, out]`` when ``transposed``), groups along ``in``."""
    m = w.detach().float().T if transposed else w.detach().float()
    out_f, in_f = m.shape
    g = min(group_size, in_f)
    pad = (-in_f) % g
    padded = torch.nn.functional.pad(m, (0, pad)).view(out_f, -1, g)
    qmax = 2 ** (bits - 1) - 1
    scale = padded.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
    q = (padded / scale).round().clamp(-qmax - 1, qmax) * scale
    q = q.view(out_f, -1)[:, :in_f]
    return (q.T if transposed else q).to(w.dtype)


def quantize_blocks(model: torch.nn.Module, bits: int, group_size: int) -> int:
    """Quantize (in place) every linear map's weight inside the transformer blocks; returns how many."""
    count = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if not any(part in name for part in (".h.", ".layers.")):
                continue
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(quantize_weight(module.weight, bits, group_size))
                count += 1
            elif type(module).__name__ == "Conv1D":  # GPT-2 stores weight as [in, out]
                module.weight.copy_(quantize_weight(module.weight, bits, group_size, transposed=True))
                count += 1
    return count


@register_attack("quantization", QuantizationConfig, budget_unit="precisions", kind="weights", fast=True, family="causal-lm")
def quantization(arena: FactArena, config: QuantizationConfig, tracker: Tracker, progress: bool = True) -> None:
    """Round the unlearned weights to int8, then int4, and ask the forgotten questions again."""
    for b, bits in enumerate(BITS[: config.budget], start=1):
        twin = arena.copy()
        n = quantize_blocks(twin.model, bits, config.group_size)
        rows = tracker.pending()
        facts = [arena.fact(tracker.trials[r]) for r in rows]
        answers = arena.answers(twin, [tracker.trials[r].prompt for r in rows]) if rows else []
        tracker.report(b, rows, answer_items(answers, facts), [{"bits": bits, "layers": n, "answer": a} for a in answers])
        del twin
