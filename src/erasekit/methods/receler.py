"""Receler — Reliable Concept Erasing via Lightweight Erasers (Huang et al., ECCV 2024).

A small eraser after every cross-attention layer of the UNet: ``h ← h + E_l(h)``, ``E_l = Linear(C, r)
→ GELU → Linear(r, C)`` with the last layer zero-initialised (the model is unchanged at step 0). The
UNet itself stays frozen; only the erasers train, with

    L = ‖ f_E(x_t, c) − [f*(x_t, c) − η (f*(x_t, c) − f*(x_t, ∅))] ‖²  +  λ Σ_l mean ‖ E_l(h_l) ⊙ (1 − M_l) ‖²

(the ESD loss plus concept-localised regularisation: eraser output outside the concept's region
``M_l`` is penalised). ``M_l`` is the cross-attention map of the concept's tokens in layer ``l`` (mean
over heads, normalised to a maximum of 1 per image), computed in the same forward pass. After
``adv_warmup`` iterations, every ``adv_every`` iterations an inner soft-prompt attack
(``attacks/soft_prompt.py``) finds token vectors that make the erased model draw the concept again,
and the ESD loss is also applied to that adversarial prompt. Our insertion is out-of-place, so it
really changes the embedding that reaches the UNet (the reference writes through ``.data`` with
advanced indexing, a silent no-op).

Defaults: rank 128 and λ 0.1 as in the reference notes; η 1, 500 iterations, Adam lr 3e-4, attack of
1 token / 10 steps every 10 iterations after 100 are our choices (the notes are silent). The eraser
is an attachment, not a weight change: ``Erasure.apply`` hooks it in, ``remove`` takes it off, and
``erasekit export`` refuses it (a plain diffusers pipeline cannot hold it). Masks come from
cross-attention on every model, the testbed included (its generator's exact masks describe rendered
images, not the model's own trajectories).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.soft_prompt import SoftPrompt, SoftPromptConfig, optimise_soft_prompt
from ..core.attachments import Attachment, get_module, register_attachment
from ..core.errors import ConfigError, UnsupportedModelError
from ..core.registry import MethodResult, register_method
from ..training import TrajectoryConfig, Workbench, esd_point, fit
from ..training.attention import CrossAttentionProbe, concept_positions
from ..training.diffusion import PipeView


def _eraser(channels: int, rank: int) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(channels, rank), nn.GELU(), nn.Linear(rank, channels))
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    return net


@register_attachment
class ReceleErasers(Attachment):
    """One eraser per cross-attention module (``unet...attn2``), added to its output by a forward hook."""

    kind = "receler"

    def __init__(self, erasers: dict[str, nn.Sequential], rank: int):
        self.erasers, self.rank = erasers, rank
        self.capture: list[torch.Tensor] | None = None  # eraser outputs of the last forward, when set to []

    @staticmethod
    def build(unet: nn.Module, component: str, rank: int) -> "ReceleErasers":
        torch.manual_seed(0)
        erasers = {f"{component}.{name}": _eraser(m.to_out[0].out_features, rank) for name, m in unet.named_modules() if name.endswith("attn2")}
        if not erasers:
            raise UnsupportedModelError("receler needs cross-attention modules named attn2 (UNet models)")
        return ReceleErasers(erasers, rank)

    def parameters(self) -> dict[str, nn.Parameter]:
        return {f"receler.{path}.{n}": p for path, net in self.erasers.items() for n, p in net.named_parameters()}

    def install(self, pipe) -> list:
        handles = []
        for path, net in self.erasers.items():
            module = get_module(pipe, path)
            net.to(next(module.parameters()).device)

            def hook(_m, _args, out, net=net):
                delta = net(out.to(net[0].weight.dtype)).to(out.dtype)
                if self.capture is not None:
                    self.capture.append(delta)
                return out + delta

            handles.append(module.register_forward_hook(hook))
        return handles

    def config(self) -> dict:
        return {"rank": self.rank, "paths": list(self.erasers), "channels": [net[0].in_features for net in self.erasers.values()]}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{path}.{n}": p.detach().cpu().contiguous() for path, net in self.erasers.items() for n, p in net.named_parameters()}

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "ReceleErasers":
        erasers = {}
        for path, channels in zip(config["paths"], config["channels"]):
            net = _eraser(channels, config["rank"])
            net.load_state_dict({n: tensors[f"{path}.{n}"] for n, _ in net.named_parameters()})
            erasers[path] = net
        return cls(erasers, config["rank"])


@dataclass
class ReceleConfig(TrajectoryConfig):
    rank: int = field(default=128, metadata={"help": "hidden width of each eraser"})
    reg_weight: float = field(default=0.1, metadata={"help": "λ of the concept-localised regularisation"})
    adv_warmup: int = field(default=100, metadata={"help": "iterations before the adversarial prompts start"})
    adv_every: int = field(default=10, metadata={"help": "run the inner attack every N iterations (0: never)"})
    adv_steps: int = field(default=10, metadata={"help": "Adam steps of each inner attack"})
    adv_lr: float = field(default=1e-3, metadata={"help": "learning rate of the inner attack"})
    adv_tokens: int = field(default=1, metadata={"help": "adversarial token vectors"})
    filler: str = field(default="a", metadata={"help": "placeholder word whose embedding slots the vectors take"})
    iterations: int = field(default=500, metadata={"help": "optimisation steps"})
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the erasers"})

    def validate(self) -> None:
        self.check_trajectory("receler")
        if self.rank < 1 or self.reg_weight < 0 or self.adv_every < 0:
            raise ConfigError("receler needs rank >= 1, reg_weight >= 0 and adv_every >= 0")
        if self.lora_rank:
            raise ConfigError("receler trains its own erasers; it has no LoRA form (set lora_rank=0)")


class ReceleObjective:
    def __init__(self, bench: Workbench, erasers: ReceleErasers, maps: CrossAttentionProbe, prompts: list[str], phrases: list[str], config: ReceleConfig):
        self.bench, self.erasers, self.maps, self.prompts, self.config = bench, erasers, maps, prompts, config
        tok = bench.pipe.tokenizer
        self.positions = [concept_positions(tok, p, ph) for p, ph in zip(prompts, phrases)]
        self.adv_positions = [concept_positions(tok, p, ph, offset=config.adv_tokens) for p, ph in zip(prompts, phrases)]
        self.cond = bench.cond(prompts)
        self.uncond = bench.cond([""])
        self.soft = SoftPrompt(bench.pipe, SoftPromptConfig(config.adv_tokens, config.adv_steps, config.adv_lr, config.filler))

    def attacking(self, step: int) -> bool:
        cfg = self.config
        return bool(cfg.adv_every) and step >= cfg.adv_warmup and (step - cfg.adv_warmup) % cfg.adv_every == 0

    def _erase_terms(self, xt, t, cond, positions, target) -> tuple[torch.Tensor, torch.Tensor]:
        self.erasers.capture = []
        self.maps.reset([positions])
        pred = self.bench.predict(xt, t, cond)
        outs, masks = self.erasers.capture, self.maps.maps
        self.erasers.capture = None
        self.maps.reset(None)
        reg = sum((o * (1 - m[..., None])).pow(2).mean() for o, m in zip(outs, masks)) / max(1, len(outs))
        return F.mse_loss(pred.float(), target.float()), reg

    def loss(self, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, bench = self.config, self.bench
        i = int(torch.randint(0, len(self.prompts), (1,), generator=gen))
        cond = self.cond.select([i])
        pt = esd_point(bench, cond, self.uncond, cfg, gen)
        xt, t, f_c, target = pt.xt, pt.t, pt.f_c, pt.target
        esd, reg = self._erase_terms(xt, t, cond, self.positions[i], target)
        terms = {"esd": esd, "reg": cfg.reg_weight * reg}
        if self.attacking(step):
            optimise_soft_prompt(bench, self.soft, xt, t, [self.prompts[i]], f_c, student=False)
            adv_cond = self.soft.cond(bench, [self.prompts[i]])
            adv_cond = type(adv_cond)(adv_cond.tokens.detach(), adv_cond.extra)
            adv, adv_reg = self._erase_terms(xt, t, adv_cond, self.adv_positions[i], target)
            terms["esd_adv"] = adv
            terms["reg"] = terms["reg"] + cfg.reg_weight * adv_reg
        return terms


@register_method("receler", ReceleConfig, families=("sd", "sdxl"), kind="adapter")
def receler(pipe, request, config: ReceleConfig, adapter, progress: bool = True, checkpoint_dir: str | None = None, resume: bool = False) -> MethodResult:
    """Receler: zero-initialised erasers after each cross-attention, localised and adversarially trained."""
    if adapter.objective != "ddpm":
        raise UnsupportedModelError(f"receler adds erasers after UNet cross-attention; {adapter.name} is not supported")
    prompts, phrases = [], []
    for t in request.targets:
        for phrase in t.phrases():
            for p in request.expand(phrase):
                prompts.append(p)
                phrases.append(phrase)
    with Workbench(pipe, adapter, [adapter.denoiser]) as bench:
        student = bench.student[adapter.denoiser]
        erasers = ReceleErasers.build(student, adapter.denoiser, config.rank)
        handles = erasers.install(PipeView(pipe, bench.student))
        maps = CrossAttentionProbe(student)
        handles += maps.install()
        try:
            params = erasers.parameters()
            objective = ReceleObjective(bench, erasers, maps, prompts, phrases, config)
            info = {"erasers": len(erasers.erasers), "numel": int(sum(p.numel() for p in params.values()))}
            result = fit(bench, params, objective, config.settings(checkpoint_dir, resume), progress, desc="receler", info=info)
        finally:
            for h in handles:
                h.remove()
        return MethodResult(weights={}, info=result.info, attachment=ReceleErasers.restore(erasers.config(), erasers.tensors()))
