"""Concept Steerers — a k-sparse autoencoder on the text encoder's residual stream, steering prompts
away from a concept (Kim & Ghadiyaram, arXiv 2501.19066; kim-dahye/steerers at 82326cf, SD 1.4 path
``unsafe_gen_sd14.py``, ``utils/hooks.py``), as a guard: no weight changes.

1. **SAE** (:mod:`erasekit.training.sae`, expansion 4, k = 32 as released) on the output of one CLIP
   encoder layer (release: ``text_model.encoder.layers.9`` of 12; default here the layer at three
   quarters of the depth, the same index on SD's CLIP) at every one of the 77 token positions, for
   training prompts: the release's are I2P's 4 703; here the target phrases bare and in the templates,
   the model's retain objects, and an optional ``prompt_file`` (one prompt per line, e.g. I2P's).
2. **Steering vector** of the concept prompt ``c`` (default: the request's phrases joined by ", "; the
   release's nudity prompt is "naked, nude, bare, exposed, Stripped, topless, male genitalia, penis,
   buttocks"): with ``h_c [77, d]`` the layer's output for ``c``,
   ``s = λ · ReLU(W_enc (h_c − b_dec) + b_enc) W_dec`` — the *un-sparsified* code (the release's
   ``encode_without_topk``), decoded without the bias; ``λ`` = −0.5 (the release's nudity setting;
   −0.7 violence; the argument's default −1).
3. **Steering**: a forward hook on the layer adds ``s`` (position by position) to the states of every
   prompt the conditional branch encodes and subtracts it from the unconditional branch's ``""`` (the
   release's call counter: +s on the first, −s on the second encode), so with λ < 0 the prompt moves
   away from the concept and the unconditional branch towards it.

Deviation: the release's SAE compares ``W_dec z + b_pre`` with ``x − b_pre`` (its training target is
shifted by ``2 b_pre``); erasekit's SAE reconstructs ``x``. SD 1.x/2.x (one CLIP text encoder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from erasekit.core.attachments import find_module, get_module, register_attachment
from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError, MissingFileError
from erasekit.core.guards import Guard, guard_text
from erasekit.core.registry import MethodResult, register_method
from erasekit.core.request import ErasureRequest
from erasekit.methods.diffusion.closed_form import augmented_prompts
from erasekit.training.sae import SAEConfig, train_sae


@dataclass
class ConceptSteerersConfig(MethodConfig):
    layer: int | None = field(default=None, metadata={"help": "CLIP encoder layer (default: 3/4 of the depth, SD's 9)"})
    strength: float = field(default=-0.5, metadata={"help": "λ (negative steers away; release nudity -0.5)", "min": -100.0})
    concept: str | None = field(default=None, metadata={"help": "the concept prompt (default: the target phrases)"})
    prompt_file: str | None = field(default=None, metadata={"help": "more SAE training prompts, one per line (e.g. I2P's)"})
    expansion: int = field(default=4, metadata={"help": "latents per input channel", "min": 1})
    k: int = field(default=32, metadata={"help": "active latents per vector (TopK)", "min": 1})
    train_steps: int = field(default=2000, metadata={"help": "SAE optimisation steps", "min": 1})
    batch: int = field(default=4096, metadata={"help": "vectors per SAE step", "min": 1})
    lr: float = field(default=4e-4, metadata={"help": "Adam learning rate", "gt": 0})
    seed: int = field(default=0, metadata={"help": "SAE initialisation and batch order"})

    def validate(self) -> None:
        if self.concept is not None and not self.concept.strip():
            raise ConfigError("concept must be a non-empty prompt (or leave it unset for the target phrases)")


def encoder_layers(pipe) -> tuple[str, int]:
    """``(path of the CLIP encoder's layer list, its length)``."""
    path = find_module(pipe, "text_encoder", "layers", "concept-steerers")
    return path.split(".", 1)[1], len(get_module(pipe, path))  # type: ignore[arg-type]


@register_attachment
class SteeringGuard(Guard):
    """Adds ``sign · s`` to the output of the text encoder layer ``path`` (module docstring)."""

    kind = "concept-steerers"

    def __init__(self, path: str, steer: torch.Tensor) -> None:
        self.path, self.steer = path, steer
        self._sign = 1.0

    def install(self, pipe) -> list:
        def hook(_m, _i, out):
            hidden = out[0] if isinstance(out, tuple) else out
            s = self.steer.to(hidden.device, hidden.dtype)[: hidden.shape[1]]
            moved = hidden + self._sign * s
            return (moved, *out[1:]) if isinstance(out, tuple) else moved

        handles = super().install(pipe)
        handles.append(get_module(pipe, self.path).register_forward_hook(hook))
        return handles

    def unconditional(self, pipe, adapter) -> Any:
        self._sign = -1.0
        try:
            with torch.no_grad():
                return adapter.conditioning(pipe, [""])
        finally:
            self._sign = 1.0

    def config(self) -> dict:
        return {"path": self.path}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"steer": self.steer.float().contiguous()}

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "SteeringGuard":
        return cls(str(config["path"]), tensors["steer"])


def training_prompts(request: ErasureRequest, neutral: list[str], prompt_file: str | None) -> list[str]:
    """The target phrases bare and in the templates, the neutral prompts and the file's lines."""
    prompts = [p for _, p in augmented_prompts(request)] + neutral
    if prompt_file is not None:
        path = Path(prompt_file)
        if not path.is_file():
            raise MissingFileError(f"concept-steerers: prompt_file {path} does not exist")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return prompts


@torch.no_grad()
def layer_states(pipe, path: str, prompts: list[str], batch: int = 64) -> torch.Tensor:
    """The output ``[len(prompts), 77, d]`` of the text-encoder layer ``path`` for ``prompts``."""
    tok, enc = pipe.tokenizer, pipe.text_encoder
    grabbed: list[torch.Tensor] = []
    handle = get_module(pipe, path).register_forward_hook(
        lambda _m, _i, out: grabbed.append((out[0] if isinstance(out, tuple) else out).float().cpu())
    )
    try:
        for i in range(0, len(prompts), batch):
            ids = tok(prompts[i : i + batch], padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids  # fmt: skip
            enc(ids.to(enc.device))
    finally:
        handle.remove()
    return torch.cat(grabbed)


@register_method("concept-steerers", ConceptSteerersConfig, families=("sd",), kind="guard", accepts=("profile",))
def concept_steerers(pipe, request: ErasureRequest, config: ConceptSteerersConfig, adapter=None, progress: bool = True,
                     profile=None) -> MethodResult:  # fmt: skip
    """Guard: a k-sparse autoencoder on a text-encoder layer, prompts steered away from the concept."""
    layers, depth = encoder_layers(pipe)
    index = config.layer if config.layer is not None else int(0.75 * depth)
    if not 0 <= index < depth:
        raise ConfigError(f"concept-steerers: layer {index} is outside the text encoder's {depth} layers (0 … {depth - 1})")
    path = f"text_encoder.{layers}.{index}"
    neutral = profile.retain_prompts(avoid=tuple(request.concepts)) if profile is not None else []
    prompts = training_prompts(request, neutral, config.prompt_file)
    states = layer_states(pipe, path, prompts)
    sae_config = SAEConfig(config.expansion, config.k, config.train_steps, config.batch, config.lr, seed=config.seed)
    sae, stats = train_sae(states.flatten(0, 1).to(pipe.device), sae_config, progress, "concept-steerers: SAE")
    concept = guard_text(request, config.concept)
    with torch.no_grad():
        h_c = layer_states(pipe, path, [concept])[0].to(pipe.device)  # [77, d]
        steer = (config.strength * sae.pre_acts(h_c) @ sae.w_dec).cpu()
    guard = SteeringGuard(path, steer)
    return MethodResult(
        {}, {**stats, "layer": path, "training_prompts": len(prompts), "concept_prompt": concept}, attachment=guard
    )
