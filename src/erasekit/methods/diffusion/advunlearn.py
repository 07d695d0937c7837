"""AdvUnlearn (Zhang et al., NeurIPS 2024, "Defensive Unlearning with Adversarial Training for Robust
Concept Erasure"; OPTML-Group/AdvUnlearn).

Adversarial training of the text encoder: an inner soft-prompt attack finds vectors ``v`` that make
the current model draw the concept again (``attacks/diffusion/soft_prompt.py``), and the outer step applies the
ESD loss to the adversarial prompt plus a retain term:

    L = ‖ f(x_t, E_θ(c ⊕ v), t) − [f*(x_t,c,t) − η (f*(x_t,c,t) − f*(x_t,∅,t))] ‖²
        + λ ‖ f(x_t, E_θ(c_r), t) − f(x_t, E₀(c_r), t) ‖²

``x_t`` from the frozen model's partial denoising with ``c`` (as ESD) for the erase term and with
``c_r`` for the retain term (each prompt on its own trajectory, stopped at the concept's step, as
``get_loss.py``); the inner attack draws a fresh ``(x_t, t)`` of the concept's trajectory for every
one of its steps. ``E_θ`` the trained text encoder (its layers, not the embeddings: parameter set
``text-encoder``), ``E₀`` the original; ``c_r`` a batch of ``retain_batch`` (5) retain prompts per
step, drawn without replacement until the set is used up (``retain_prompt.get_random_prompts``): the
request's preserved concepts when it has them, else (``retain_set="objects"``, the README's
``--dataset_retain coco_object``) object prompts, "a photo of {object}" over COCO's 80 categories on
real models and the world's shapes and characters on the testbed, minus those naming a target; the
released list is its own 243 object words, erasekit ships COCO's category names. ``retain_set="empty"``
is erasekit's earlier retain set, the empty prompt alone. Defaults follow the reference:
1000 iterations, Adam lr 1e-5, λ 0.3, the attack (1 token, Adam lr 1e-3, 30 steps) every
iteration after 200 warm-up iterations, the adversarial vectors carried from one attack to the next.
On SDXL the vectors go into the first text encoder (CLIP-L) only. The reference's custom text encoder
passes the causal mask under a name transformers 5 ignores; we use the stock CLIPTextModel.

The target: the reference writes it ``f*(∅) − η_ref (f*(c) − f*(∅))`` with η_ref = 1, i.e.
``2 f*(∅) − f*(c)``; in ESD's form used here that is η = 2, the default (η = 1 would train toward
``f*(∅)`` only, a weaker target).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from erasekit.attacks.diffusion.soft_prompt import SoftPrompt, SoftPromptConfig, optimise_soft_prompt
from erasekit.core.errors import ConfigError, UnsupportedModelError
from erasekit.core.registry import MethodResult, register_method
from erasekit.models.profile import profile_of
from erasekit.training import TrajectoryConfig, Workbench, esd_point, fit, target_prompts, trainable_parameters


@dataclass
class AdvUnlearnConfig(TrajectoryConfig):
    retain_weight: float = field(default=0.3, metadata={"help": "λ of the retain term"})
    warmup: int = field(default=200, metadata={"help": "iterations before the inner attack starts"})
    attack_every: int = field(default=1, metadata={"help": "run the inner attack every N iterations after warm-up", "min": 1})
    attack_steps: int = field(default=30, metadata={"help": "Adam steps of each inner attack"})
    attack_lr: float = field(default=1e-3, metadata={"help": "learning rate of the inner attack", "gt": 0})
    attack_tokens: int = field(default=1, metadata={"help": "adversarial token vectors inserted after BOS", "min": 1})
    filler: str = field(default="a", metadata={"help": "placeholder word whose embedding slots the vectors take"})
    retain_set: str = field(
        default="objects", metadata={"help": "without preserved concepts: objects (COCO / the world's objects) or empty ('')"}
    )
    retain_batch: int = field(default=5, metadata={"help": "retain prompts per step", "min": 1})
    iterations: int = field(default=1000, metadata={"help": "optimisation steps", "min": 1})
    lr: float = field(default=1e-5, metadata={"help": "Adam learning rate of the text encoder", "gt": 0})

    def validate(self) -> None:
        self.check_trajectory("advunlearn")
        if min(self.attack_every, self.attack_tokens, self.retain_batch) < 1 or self.warmup < 0:
            raise ConfigError("advunlearn needs attack_every, attack_tokens, retain_batch >= 1 and warmup >= 0")
        if self.retain_set not in ("objects", "empty"):
            raise ConfigError(f"advunlearn's retain_set must be objects or empty, got {self.retain_set!r}")


class AdvUnlearnObjective:
    def __init__(self, bench: Workbench, prompts: list[str], retain: list[str], config: AdvUnlearnConfig):
        self.bench, self.prompts, self.retain, self.config = bench, prompts, retain, config
        self.cond = bench.cond(prompts)
        self.uncond = bench.cond([""])
        self.retain_cond = bench.cond(retain)
        attack = SoftPromptConfig(
            n_tokens=config.attack_tokens, steps=config.attack_steps, lr=config.attack_lr, filler=config.filler
        )
        self.soft = SoftPrompt(bench.pipe, attack)
        self.last_attack_loss: float | None = None
        self.unseen: list[int] = []

    def attacking(self, step: int) -> bool:
        return step >= self.config.warmup and (step - self.config.warmup) % self.config.attack_every == 0

    def retain_rows(self, gen: torch.Generator) -> list[int]:
        """``retain_batch`` retain prompts not drawn since the set was last used up (then it starts over)."""
        k = min(self.config.retain_batch, len(self.retain))
        if len(self.unseen) < k:
            self.unseen = list(range(len(self.retain)))
        picks = torch.randperm(len(self.unseen), generator=gen)[:k].tolist()
        rows = [self.unseen[p] for p in picks]
        self.unseen = [r for r in self.unseen if r not in rows]
        return rows

    def loss(self, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, bench = self.config, self.bench
        i = int(torch.randint(0, len(self.prompts), (1,), generator=gen))
        stop = int(torch.randint(0, cfg.ddim_steps, (1,), generator=gen))  # shared by the concept and the retain batch
        pt = esd_point(bench, self.cond.select([i]), self.uncond, cfg, gen, stop=stop)
        xt, t = pt.xt, pt.t
        if self.attacking(step):

            def draw():  # a fresh (x_t, t) of the concept's trajectory for every attack step, as the reference
                p = esd_point(bench, self.cond.select([i]), self.uncond, cfg, gen)
                return p.xt, p.t, p.f_c

            self.last_attack_loss = optimise_soft_prompt(bench, self.soft, xt, t, [self.prompts[i]], pt.f_c, draw=draw)
            adv = self.soft.cond(bench, [self.prompts[i]], student=True)
        else:
            adv = bench.student_cond([self.prompts[i]])
        terms = {"esd": F.mse_loss(bench.predict(xt, t, adv).float(), pt.target.float())}
        rows = self.retain_rows(gen)
        rp = esd_point(bench, self.retain_cond.select(rows), self.uncond, cfg, gen, stop=stop)  # their own trajectories
        r_pred = bench.predict(rp.xt, rp.t, bench.student_cond([self.retain[j] for j in rows]))
        terms["retain"] = cfg.retain_weight * F.mse_loss(r_pred.float(), rp.f_c.float())
        return terms


@register_method("advunlearn", AdvUnlearnConfig, families=("sd", "sdxl"), kind="fine-tuning", accepts=("checkpoints", "monitor"))
def advunlearn(
    pipe,
    request,
    config: AdvUnlearnConfig,
    adapter,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    monitor=None,
) -> MethodResult:
    """AdvUnlearn: text-encoder ESD training on adversarial soft prompts, with a retain term."""
    if adapter.objective != "ddpm":
        raise UnsupportedModelError(f"advunlearn trains CLIP text encoders of UNet models; {adapter.name} is not supported")
    retain = request.preserve_prompts()
    if retain and config.retain_set != "objects":
        raise ConfigError("advunlearn's retain_set applies without preserved concepts (the request's --preserve are retained)")
    if not retain:
        targets = tuple(ph for t in request.targets for ph in t.phrases())
        retain = profile_of(pipe).retain_prompts(targets) if config.retain_set == "objects" else []
    retain = retain or [""]
    with Workbench.for_parameters(pipe, adapter, "text-encoder") as bench:
        params, info = trainable_parameters(bench, "text-encoder", config.lora_rank)
        objective = AdvUnlearnObjective(bench, target_prompts(request), retain, config)
        settings = config.settings(checkpoint_dir, resume)
        result = fit(bench, params, objective, settings, progress, desc="advunlearn", info=info, lora=bool(config.lora_rank),
                     extra_state={"soft_prompt": objective.soft.vectors}, monitor=monitor)  # fmt: skip
        result.info["last_attack_loss"] = objective.last_attack_loss
        return result
