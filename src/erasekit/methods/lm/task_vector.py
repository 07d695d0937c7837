"""Task-vector negation (Ilharco et al. 2023; MUSE's "Task Vector" baseline).

Fine-tune a copy on the forget answers (plain NLL descent: a model that knows them *better*), take
the task vector ``τ = θ_ft − θ`` and subtract it: ``θ' = θ − s · τ``.

Defaults are MUSE's runs (``baselines/scripts/unlearn_{news,books}.sh``, ``baselines/finetune.py``):
``s = 5`` (``--alpha 5.0``; 1 is only their argparse default), and a fine-tune of 10 epochs at lr 1e-5
with transformers' cosine schedule, no warm-up and no weight decay. Batches are the common recipe's
(8 × 4; MUSE: 4 per device on 8 GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from erasekit.core.registry import MethodResult, register_method
from erasekit.training.lm import Step, UnlearnConfig, fit, nll


@dataclass
class TaskVectorConfig(UnlearnConfig):
    scale: float = field(default=5.0, metadata={"help": "multiple s of the task vector subtracted (MUSE's runs: 5)", "gt": 0})
    lr_schedule: str = field(default="cosine", metadata={"help": "fine-tune lr schedule (MUSE: cosine)"})
    warmup_epochs: float = field(default=0.0, metadata={"help": "fine-tune warm-up in epochs (MUSE: none)"})
    weight_decay: float = field(default=0.0, metadata={"help": "fine-tune AdamW weight decay (MUSE: 0)"})


@register_method("task-vector", TaskVectorConfig, families=("causal-lm",), kind="fine-tuning", accepts=("checkpoints",))
def task_vector(
    lm,
    request,
    config: TaskVectorConfig,
    adapter=None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    resume: bool = False,
) -> MethodResult:
    """Fine-tune on the forget set, then subtract that task vector from the original weights."""

    def loss(s: Step):
        forget = nll(s.model, s.forget)
        return forget, {"forget_nll": forget.item()}

    fitted = fit(lm, request, config, loss, progress, checkpoint_dir=checkpoint_dir, resume=resume)
    if fitted.lora:  # the task vector is the LoRA's B A: W − s · B A = W + (−s B) A
        lora = {k: -config.scale * v if ".lora_B." in k else v for k, v in fitted.lora.items()}
        return MethodResult({}, {"log": fitted.log}, lora=lora)
    original = dict(lm.model.named_parameters())
    weights = {}
    for key, new in fitted.weights.items():
        old = original[key[len("model.") :]].detach().float()
        weights[key] = old - config.scale * (new.float() - old)
    return MethodResult(weights, {"log": fitted.log})
