"""Language-model unlearning: its loss pieces and :func:`fit`, its recipe on the one training loop.

A method is a loss over a forget batch and a retain batch; :func:`fit` does the rest in
:func:`erasekit.training.engine.train` (the loop the image methods use: checkpoints, resume, the
refusals of a silent or non-finite run), the same way for every method (open-unlearning's recipe): a **float32 copy** of the model is trained (the user's
model is never changed and serves as the frozen reference ``π_ref``), AdamW with transformers'
warm-up over the first epoch counted as open-unlearning counts it (``int(warmup_epochs · n_forget //
(batch_size · grad_accum))`` steps, ``lr`` 0 at the first) and then a **linear decay to 0**
(``lr_schedule="linear"``, transformers' default, which the TOFU experiments of open-unlearning and
the NPO / SimNPO authors run; ``constant`` as MUSE's runs, ``cosine``), ``epochs`` passes over the forget set in batches of ``batch_size`` ×
``grad_accum``, each forget batch paired with as many retain pairs (cycled), gradients clipped to
norm 1. Only the parameters chosen by ``params`` train (:func:`select_parameters`), or a LoRA on
them (``lora_rank``); the result holds the new values of exactly those (``model.<name>`` keys) or
the LoRA's factors. A loss that does not depend on the trainable
parameters, or that becomes non-finite, stops the run with an error instead of returning an
unchanged or broken model.

Sequences are ``<bos> question answer`` and every loss reads the answer tokens only.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult
from erasekit.core.request import ForgetRequest, QAPair
from erasekit.models.causal_lm import PARAMETER_SETS, select_parameters  # noqa: F401  (also importable from here)
from erasekit.models.lm_batches import answer_token_logprobs, encode_pairs, target_positions
from erasekit.training.engine import LR_SCHEDULES, TrainingSettings, train

#: Which positions a per-token loss averages over (:func:`~erasekit.models.lm_batches.target_positions`).
POSITIONS = ("text", "answer")


@dataclass
class UnlearnConfig(MethodConfig):
    """Options every fine-tuning unlearning method has (open-unlearning's TOFU defaults)."""

    epochs: int = field(default=10, metadata={"help": "passes over the forget set", "min": 1})
    lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate (open-unlearning: 1e-5)", "gt": 0})
    batch_size: int = field(default=8, metadata={"help": "forget pairs per micro-batch", "min": 1})
    grad_accum: int = field(default=4, metadata={"help": "micro-batches per optimiser step", "min": 1})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    lr_schedule: str = field(
        default="linear",
        metadata={"help": "lr after the warm-up: linear (decays to 0, TOFU / open-unlearning), constant (MUSE) or cosine"},
    )
    warmup_epochs: float = field(
        default=1.0, metadata={"help": "linear warm-up length in epochs (open-unlearning's TOFU: 1; 0: none)"}
    )
    params: str = field(
        default="all",
        metadata={"help": "parameters that train: all, mlp, attn, or re:<regex> over parameter names"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the batch order, the dropout and a LoRA's initialisation"})
    lora_rank: int = field(
        default=0, metadata={"help": "train a LoRA of this rank on the chosen weight matrices instead of them (0: off)", "min": 0}
    )
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA scale numerator, update (lora_alpha / lora_rank) B A", "gt": 0}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA's input", "min": 0, "max": 1})
    checkpoint_every: int = field(
        default=0, metadata={"help": "with a checkpoint directory: save every N steps (0: every tenth of the run)", "min": 0}
    )

    def validate(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule={self.lr_schedule!r}: use {', '.join(LR_SCHEDULES)}")
        if not (self.params in PARAMETER_SETS or self.params.startswith("re:")):
            raise ConfigError(f"params={self.params!r}: use all, mlp, attn, or re:<regex>")


def answer_logprob(model: torch.nn.Module, batch: dict[str, torch.Tensor], mean: bool = False) -> torch.Tensor:
    """``log π(answer | question)`` per row: the sum over answer tokens (``mean``: divided by their number)."""
    lp, valid = answer_token_logprobs(model, batch)
    total = lp.sum(dim=1)
    return total / valid.sum(dim=1).clamp(min=1) if mean else total


def nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean token negative log-likelihood of the answers (the language-modelling loss)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)


def kl_to_reference(
    model: torch.nn.Module, reference: torch.nn.Module, batch: dict[str, torch.Tensor], positions: str = "text"
) -> torch.Tensor:
    """``KL(π_ref ‖ π_θ)`` per position, averaged over the positions (the KL retain term): ``text``
    every real token (open-unlearning's ``compute_kl_divergence``, a ``batchmean`` over every position
    of the flattened batch; its padding positions are left out here, as their number depends on the
    longest text of the batch) or ``answer`` the answer tokens only."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()[:, :-1]
    with torch.no_grad():
        ref = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()[:, :-1]
    _, valid = target_positions(batch, positions)
    kl = F.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(ref, -1), log_target=True, reduction="none").sum(-1)
    return (kl * valid).sum() / valid.sum().clamp(min=1)


def retain_loss(kind: str, model, reference, batch, kl_positions: str = "text") -> torch.Tensor:
    """The retain term ``L_retain``: ``NLL`` of the retain answers or ``KL`` to the frozen model (over
    ``kl_positions``)."""
    if kind == "NLL":
        return nll(model, batch)
    if kind == "KL":
        return kl_to_reference(model, reference, batch, kl_positions)
    raise ConfigError(f"retain_loss={kind!r}: use NLL or KL")


@dataclass
class RetainConfig(UnlearnConfig):
    """Options of methods whose loss is ``γ · L_forget + α · L_retain``."""

    gamma: float = field(default=1.0, metadata={"help": "weight γ of the forget term"})
    alpha: float = field(default=1.0, metadata={"help": "weight α of the retain term (0: none)"})
    retain_loss: str = field(default="NLL", metadata={"help": "NLL (of retain answers) or KL (to the frozen model)"})
    kl_positions: str = field(
        default="text",
        metadata={"help": "with retain_loss=KL: text (every real token, open-unlearning) or answer (answer tokens)"},
    )

    def validate(self) -> None:
        super().validate()
        if self.retain_loss not in ("NLL", "KL"):
            raise ConfigError(f"retain_loss={self.retain_loss!r}: use NLL or KL")
        if self.kl_positions not in POSITIONS:
            raise ConfigError(f"kl_positions={self.kl_positions!r}: use {' or '.join(POSITIONS)}")
        if self.kl_positions != "text" and self.retain_loss != "KL":
            raise ConfigError(
                f"kl_positions={self.kl_positions!r} applies to retain_loss=KL only (drop it or set retain_loss=KL)"
            )


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
        retain = retain_loss(config.retain_loss, s.model, s.reference, s.retain, config.kl_positions)
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


@dataclass
class Fitted:
    """What :func:`fit` trained: the new values of the trained parameters (``model.<name>``), or a
    LoRA's factors (:func:`lora_factors`), and the run's log."""

    weights: dict[str, torch.Tensor]
    lora: dict[str, torch.Tensor]
    log: dict

    def result(self, **info) -> MethodResult:
        """The method's result: these tensors, the log and ``info``."""
        return MethodResult(self.weights, {"log": self.log, **info}, lora=self.lora)


def fit(lm, request: ForgetRequest, config: UnlearnConfig, loss_fn: LossFn, progress: bool = True,
        forget_pairs: Sequence[QAPair] | None = None, needs_retain: bool = False,
        checkpoint_dir: str | None = None, resume: bool = False) -> Fitted:  # fmt: skip
    """Train a float32 copy of ``lm.model`` with ``loss_fn`` in the one training loop
    (:func:`erasekit.training.engine.train`; module docstring for the recipe) and return what
    trained. With ``config.lora_rank`` a LoRA on the chosen weight matrices trains instead. The run
    is reproducible and resumable: the batch order draws from ``config.seed``, each micro-batch's
    dropout from the loop's generator of that step (the caller's random state is left as it was);
    with ``checkpoint_dir`` it checkpoints every ``config.checkpoint_every`` steps (0: every tenth)
    and ``resume`` continues from the newest checkpoint exactly as the uninterrupted run would."""
    if needs_retain and not request.retain:
        raise ConfigError("this method has a retain term: the forget request needs retain pairs (--retain or a testbed split)")
    forget = list(forget_pairs if forget_pairs is not None else request.forget)
    schedule = epoch_schedule(forget, list(request.retain), config)
    lora = LoraSpec(config.lora_rank, config.lora_alpha, config.lora_dropout) if config.lora_rank else None
    devices = [lm.device.index or 0] if lm.device.type == "cuda" else []
    every = (config.checkpoint_every or max(1, len(schedule) // 10)) if checkpoint_dir else 0
    settings = TrainingSettings(steps=len(schedule), lr=config.lr, optimizer="adamw", weight_decay=config.weight_decay,
                                grad_accum=config.grad_accum, grad_clip=1.0, seed=config.seed,
                                warmup_steps=warmup_steps(len(forget), config), lr_schedule=config.lr_schedule,
                                mixed_precision="no", checkpoint_every=every, checkpoint_dir=checkpoint_dir, resume=resume)  # fmt: skip
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)  # the LoRA's initialisation
        reference = lm.model.eval()
        model = copy.deepcopy(lm.model).float().train()
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = select_parameters(model, config.params)
        if lora is not None:
            trainable = inject_lora(model, trainable, lora)
        for p in trainable.values():
            p.requires_grad_(True)
        objective = _Unlearning(lm, model, reference, schedule, loss_fn)
        run = train(trainable, objective, settings, progress=progress, desc=f"unlearning {request.name}")
    log = {"steps": len(schedule), "loss": [round(d["loss"], 5) for d in run.losses], "start_step": run.start_step,
           "seconds": round(run.seconds, 3)}  # fmt: skip
    if lora is not None:
        return Fitted({}, lora_factors(model, lora), log)
    return Fitted({f"model.{n}": p.detach() for n, p in trainable.items()}, {}, log)


def warmup_steps(n_forget: int, config: UnlearnConfig) -> int:
    """Warm-up steps as open-unlearning's ``load_trainer_args`` counts them on one device:
    ``int(warmup_epochs · n_forget // (batch_size · grad_accum))`` (1 for TOFU's forget01 of 40 pairs)."""
    return int(config.warmup_epochs * n_forget // (config.batch_size * config.grad_accum))


#: One optimiser step of an unlearning run: its micro-batches, each (forget pairs, retain pairs).
Schedule = list[list[tuple[list[QAPair], list[QAPair]]]]


def epoch_schedule(forget: list[QAPair], retain: list[QAPair], config: UnlearnConfig) -> Schedule:
    """Every step of the run, fixed before it starts (so a resumed run sees the same batches):
    ``epochs`` shuffled passes over ``forget`` in micro-batches of ``batch_size``, ``grad_accum`` of
    them per step (the last step of an epoch may have fewer), each paired with as many retain pairs
    drawn from endless shuffled passes over ``retain`` (none when there are none); one
    ``random.Random(seed)`` draws both."""
    rng = random.Random(config.seed)
    retain_cycle = _cycle(list(retain), rng)
    steps: Schedule = []
    for _ in range(config.epochs):
        order = forget[:]
        rng.shuffle(order)
        chunks = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        for s in range(0, len(chunks), config.grad_accum):
            steps.append(
                [(chunk, [next(retain_cycle) for _ in chunk] if retain else []) for chunk in chunks[s : s + config.grad_accum]]
            )
    return steps


class _Unlearning:
    """The :class:`~erasekit.training.engine.BatchedObjective` of an unlearning run: micro-batch
    ``micro`` of step ``step`` encoded and handed to the method's loss."""

    def __init__(self, lm, model, reference, schedule: Schedule, loss_fn: LossFn):
        self.lm, self.model, self.reference, self.schedule, self.loss_fn = lm, model, reference, schedule, loss_fn

    def micro_batches(self, step: int) -> int:
        return len(self.schedule[step])

    def loss(self, step: int, gen: torch.Generator, micro: int) -> dict[str, torch.Tensor | float]:
        forget, retain = self.schedule[step][micro]
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))  # this micro-batch's dropout
        tok, device = self.lm.tokenizer, self.lm.device
        batch = Step(encode_pairs(tok, forget, device), encode_pairs(tok, retain, device) if retain else None,
                     self.model, self.reference, step, forget)  # fmt: skip
        loss, parts = self.loss_fn(batch)
        return {"loss": loss, **{k: float(v) for k, v in parts.items() if k != "loss"}}


def _cycle(items: list, rng: random.Random):
    """Endless shuffled passes over ``items`` (nothing when empty)."""
    while items:
        order = items[:]
        rng.shuffle(order)
        yield from order
