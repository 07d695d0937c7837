"""The training loop every language-model unlearning method shares, and its loss pieces.

A method is a loss over a forget batch and a retain batch; :func:`fit` does the rest, the same way
for every method (open-unlearning's recipe): a **float32 copy** of the model is trained (the user's
model is never changed and serves as the frozen reference ``π_ref``), AdamW with linear warm-up over
the first epoch, ``epochs`` passes over the forget set in batches of ``batch_size`` ×
``grad_accum``, each forget batch paired with as many retain pairs (cycled), gradients clipped to
norm 1. Only the parameters chosen by ``params`` train (:func:`select_parameters`); the result holds
the new values of exactly those (``model.<name>`` keys). A loss that does not depend on the trainable
parameters, or that becomes non-finite, stops the run with an error instead of returning an
unchanged or broken model.

Sequences are ``<bos> question answer`` and every loss reads the answer tokens only.
"""

from __future__ import annotations

import copy
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.config import MethodConfig
from ..core.errors import ConfigError, ErasekitError, NonFiniteError
from ..core.request import ForgetRequest, QAPair
from .batches import answer_token_logprobs, encode_pairs


@dataclass
class UnlearnConfig(MethodConfig):
    """Options every fine-tuning unlearning method has (open-unlearning's TOFU defaults)."""

    epochs: int = field(default=10, metadata={"help": "passes over the forget set", "min": 1})
    lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate (open-unlearning: 1e-5)", "gt": 0})
    batch_size: int = field(default=8, metadata={"help": "forget pairs per micro-batch", "min": 1})
    grad_accum: int = field(default=4, metadata={"help": "micro-batches per optimiser step", "min": 1})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    params: str = field(
        default="all",
        metadata={"help": "parameters that train: all, mlp, attn, or re:<regex> over parameter names"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the batch order"})

    def validate(self) -> None:
        if not (self.params in PARAMETER_SETS or self.params.startswith("re:")):
            raise ConfigError(f"params={self.params!r}: use all, mlp, attn, or re:<regex>")


#: Named parameter sets (regexes over ``named_parameters`` names) valid for GPT-2 and Llama-style models.
PARAMETER_SETS = {
    "all": r".*",
    "mlp": r"\.(mlp)\.",
    "attn": r"\.(attn|self_attn)\.",
}


def select_parameters(model: torch.nn.Module, params: str) -> dict[str, torch.nn.Parameter]:
    """``{name: parameter}`` of the set ``params`` (a name of :data:`PARAMETER_SETS` or ``re:<regex>``);
    tied parameters appear once, under their first name. An empty selection is an error."""
    pattern = re.compile(params[3:] if params.startswith("re:") else PARAMETER_SETS[params])
    chosen = {n: p for n, p in model.named_parameters() if pattern.search(n)}
    if not chosen:
        raise ConfigError(
            f"params={params!r} selects no parameter of this model (first names: {', '.join(list(dict(model.named_parameters()))[:4])})"
        )
    return chosen


def answer_logprob(model: torch.nn.Module, batch: dict[str, torch.Tensor], mean: bool = False) -> torch.Tensor:
    """``log π(answer | question)`` per row: the sum over answer tokens (``mean``: divided by their number)."""
    lp, valid = answer_token_logprobs(model, batch)
    total = lp.sum(dim=1)
    return total / valid.sum(dim=1).clamp(min=1) if mean else total


def nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean token negative log-likelihood of the answers (the language-modelling loss)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)


def kl_to_reference(model: torch.nn.Module, reference: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``KL(π_ref ‖ π_θ)`` per answer token, averaged (the KL retain term)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()[:, :-1]
    with torch.no_grad():
        ref = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()[:, :-1]
    valid = batch["labels"][:, 1:] != -100
    kl = F.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(ref, -1), log_target=True, reduction="none").sum(-1)
    return (kl * valid).sum() / valid.sum().clamp(min=1)


def retain_loss(kind: str, model, reference, batch) -> torch.Tensor:
    """The retain term ``L_retain``: ``NLL`` of the retain answers or ``KL`` to the frozen model."""
    if kind == "NLL":
        return nll(model, batch)
    if kind == "KL":
        return kl_to_reference(model, reference, batch)
    raise ConfigError(f"retain_loss={kind!r}: use NLL or KL")


@dataclass
class RetainConfig(UnlearnConfig):
    """Options of methods whose loss is ``γ · L_forget + α · L_retain``."""

    gamma: float = field(default=1.0, metadata={"help": "weight γ of the forget term"})
    alpha: float = field(default=1.0, metadata={"help": "weight α of the retain term (0: none)"})
    retain_loss: str = field(default="NLL", metadata={"help": "NLL (of retain answers) or KL (to the frozen model)"})

    def validate(self) -> None:
        super().validate()
        if self.retain_loss not in ("NLL", "KL"):
            raise ConfigError(f"retain_loss={self.retain_loss!r}: use NLL or KL")


@dataclass
class Step:
    """What a method's loss sees at one micro-step: the forget and retain batches, the model being
    trained, the frozen reference, and the step counter."""

    forget: dict[str, torch.Tensor]
    retain: dict[str, torch.Tensor] | None
    model: torch.nn.Module
    reference: torch.nn.Module
    step: int
    pairs: list[QAPair]


def with_retain(forget: torch.Tensor, name: str, config: RetainConfig, s: "Step") -> tuple[torch.Tensor, dict[str, float]]:
    """``γ · forget + α · L_retain`` (the retain term only when α > 0 and the step has retain pairs),
    with the parts for the progress bar."""
    parts = {name: forget.item()}
    total = config.gamma * forget
    if config.alpha and s.retain is not None:
        retain = retain_loss(config.retain_loss, s.model, s.reference, s.retain)
        total = total + config.alpha * retain
        parts["retain"] = retain.item()
    return total, parts


LossFn = Callable[[Step], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA on the chosen weight matrices instead of the matrices themselves: rank ``rank``, scale
    ``alpha / rank``, ``dropout`` on its input (peft)."""

    rank: int
    alpha: float
    dropout: float = 0.0


def inject_lora(
    model: torch.nn.Module, trainable: dict[str, torch.nn.Parameter], spec: LoraSpec
) -> dict[str, torch.nn.Parameter]:
    """Inject a peft LoRA into the modules of the chosen ``*.weight`` parameters (Linear, or GPT-2's
    Conv1D) and return its parameters, the only ones that train. (The pipelines' LoRA,
    :func:`erasekit.training.lora.add_lora`, is Linear-only at scale 1 with diffusers keys.)"""
    from peft import LoraConfig, inject_adapter_in_model
    from transformers.pytorch_utils import Conv1D

    modules = sorted(n[: -len(".weight")] for n in trainable if n.endswith(".weight"))
    kinds = {type(model.get_submodule(m)) for m in modules}
    if not modules or not kinds <= {torch.nn.Linear, Conv1D}:
        raise ConfigError("a LoRA needs weight matrices (Linear or Conv1D layers) among the chosen parameters")
    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=modules, lora_dropout=spec.dropout,
                        fan_in_fan_out=Conv1D in kinds)  # fmt: skip
    inject_adapter_in_model(config, model)
    params = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    for p in params.values():
        p.requires_grad_(True)
    return params


def lora_factors(model: torch.nn.Module, spec: LoraSpec) -> dict[str, torch.Tensor]:
    """The trained LoRA as erasekit's factors (``model.<module>.lora_A.weight`` / ``lora_B.weight``,
    ``lora_B @ lora_A`` = the change of ``<module>.weight`` in its own layout, scale folded into B):
    ``(alpha/r) B A`` for a Linear, its transpose for a Conv1D (whose weight is stored [in, out])."""
    from transformers.pytorch_utils import Conv1D

    out: dict[str, torch.Tensor] = {}
    scale = spec.alpha / spec.rank
    for name, module in model.named_modules():
        if "default" not in getattr(module, "lora_A", {}):
            continue
        a = module.lora_A["default"].weight.detach().float()
        b = module.lora_B["default"].weight.detach().float()
        base = name.replace(".base_layer", "")
        if isinstance(module.base_layer, Conv1D):
            out[f"model.{base}.lora_B.weight"], out[f"model.{base}.lora_A.weight"] = a.T.contiguous(), (scale * b.T).contiguous()
        else:
            out[f"model.{base}.lora_B.weight"], out[f"model.{base}.lora_A.weight"] = (scale * b).contiguous(), a.contiguous()
    return out


def fit(lm, request: ForgetRequest, config: UnlearnConfig, loss_fn: LossFn, progress: bool = True,
        forget_pairs: Sequence[QAPair] | None = None, needs_retain: bool = False,
        lora: LoraSpec | None = None) -> tuple[dict[str, torch.Tensor], dict]:  # fmt: skip
    """Train a float32 copy of ``lm.model`` with ``loss_fn`` (module docstring); return the new
    values of the trained parameters (``model.<name>``) and a log of the run. With ``lora`` a LoRA
    on the chosen weight matrices trains instead, and the result is its factors
    (:func:`lora_factors`). The run is reproducible: batch order and dropout draw from
    ``config.seed`` (the caller's random state is left as it was)."""
    devices = [lm.device.index or 0] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        return _fit(lm, request, config, loss_fn, progress, forget_pairs, needs_retain, lora)


def _fit(lm, request, config, loss_fn, progress, forget_pairs, needs_retain, lora=None):
    if needs_retain and not request.retain:
        raise ConfigError("this method has a retain term: the forget request needs retain pairs (--retain or a testbed split)")
    forget_pairs = list(forget_pairs if forget_pairs is not None else request.forget)
    reference = lm.model.eval()
    model = copy.deepcopy(lm.model).float().train()
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = select_parameters(model, config.params)
    if lora is not None:
        trainable = inject_lora(model, trainable, lora)
    for p in trainable.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable.values(), lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = math.ceil(len(forget_pairs) / (config.batch_size * config.grad_accum))
    total = per_epoch * config.epochs
    rng = random.Random(config.seed)
    retain_cycle = _cycle(list(request.retain), rng)
    device, tok = lm.device, lm.tokenizer
    log: dict = {"steps": total, "loss": []}
    bar = tqdm(total=total, desc=f"unlearning {request.name}", disable=not progress)
    step = 0
    for _ in range(config.epochs):
        order = forget_pairs[:]
        rng.shuffle(order)
        chunks = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        for s in range(0, len(chunks), config.grad_accum):
            group = chunks[s : s + config.grad_accum]
            for g in opt.param_groups:
                g["lr"] = config.lr * min(1.0, (step + 1) / per_epoch)  # linear warm-up over the first epoch
            opt.zero_grad(set_to_none=True)
            values: dict[str, float] = {}
            for chunk in group:
                retain = [next(retain_cycle) for _ in chunk] if request.retain else []
                batch = Step(encode_pairs(tok, chunk, device), encode_pairs(tok, retain, device) if retain else None,
                             model, reference, step, chunk)  # fmt: skip
                loss, parts = loss_fn(batch)
                if not loss.requires_grad:
                    raise ErasekitError("the unlearning loss does not depend on the trained parameters (a silent no-op)")
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"the unlearning loss became {loss.item()} at step {step}; lower lr")
                (loss / len(group)).backward()
                for k, v in {"loss": loss.item(), **parts}.items():
                    values[k] = values.get(k, 0.0) + v / len(group)
            if all(p.grad is None for p in trainable.values()):
                raise ErasekitError("no trained parameter received a gradient (a silent no-op)")
            torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
            opt.step()
            step += 1
            log["loss"].append(round(values["loss"], 5))
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()})
    bar.close()
    if lora is not None:
        return lora_factors(model, lora), log
    return {f"model.{n}": p.detach() for n, p in trainable.items()}, log


def _cycle(items: list, rng: random.Random):
    """Endless shuffled passes over ``items`` (nothing when empty)."""
    while items:
        order = items[:]
        rng.shuffle(order)
        yield from order
