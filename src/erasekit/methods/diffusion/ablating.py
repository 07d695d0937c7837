"""Ablating Concepts (Kumari et al., ICCV 2023; nupurkmr9/concept-ablation).

The target prompt must produce what the anchor prompt produces, on images of the anchor. The paper's
two variants (``loss``):

    model-based:  L = ‖ f_θ(x_t, c*, t) − sg f_θ(x_t, c, t) ‖²  (+ λ_prior ‖ f_θ(x_t, c, t) − target(x_t) ‖²)
    noise-based:  L = ‖ f_θ(x_t, c*, t) − target(x_t) ‖²       (the denoising loss on the anchor images)

``x_t`` noises latents the frozen model drew from the anchor prompts ``c`` (``n_images`` of them),
``c*`` is the anchor prompt with the target inserted (here: the target prompt built with the same
template), ``sg`` is stop-gradient of the model being trained (as in the paper), and the optional
prior-preservation term is the plain denoising loss on the anchor images with the anchor prompt.

Defaults follow the reference's training runs: model-based, cross-attention to_k/to_v (``xattn-kv``;
``attn`` for its attention group, which includes self-attention), AdamW (weight decay 1e-2) with the
gradient norm clipped at 1.0, base lr 2e-6 scaled by the images per step (``--scale_lr``: 8e-6 for
batch 4 on one device), 200 steps, batch 4, prior preservation off (weight 1 when turned on).
A target without an anchor uses ``default_anchor``; the empty prompt is refused (there is no
"anchor image" of nothing).

Anchor images must not show the target: with a judge (the testbed classifier on the testbed) draws
that show it are redrawn, as the paper filters its anchor images for memorised content. This is
what erases an *implicit* concept (a watermark, which no word names): its anchor is its own trigger
prompt, so the anchor images are that prompt's images *without* the concept, and ``loss=auto`` uses
the noise-based loss for such pairs (the model-based one compares a prompt with itself and is
identically zero) — fine-tuning the trigger on clean images of itself. Without a judge, give the
clean images yourself (``anchor_image_dir``: every image is used with every anchor prompt in turn);
with neither, such a request is refused (nothing would separate the concept from its trigger).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from erasekit.core.errors import ConfigError
from erasekit.core.registry import MethodResult, register_method
from erasekit.training import ImageBank, TrainingConfig, Workbench, fit, parameter_spec, trainable_parameters


@dataclass
class AblatingConfig(TrainingConfig):
    train_method: str = field(
        default="xattn-kv",
        metadata={
            "help": "parameter set (xattn-kv: cross-attention to_k/to_v; xattn: all cross-attention; attn: self- and cross-attention)"
        },
    )
    default_anchor: str = field(default="a shape", metadata={"help": "anchor prompt for targets without one"})
    n_images: int = field(default=16, metadata={"help": "anchor images the frozen model draws per anchor prompt", "min": 1})
    sample_steps: int = field(default=20, metadata={"help": "sampler steps for the anchor images", "min": 1})
    sample_guidance: float = field(default=6.0, metadata={"help": "guidance for the anchor images"})
    batch_size: int = field(default=4, metadata={"help": "images per step", "min": 1})
    prior_weight: float = field(default=0.0, metadata={"help": "weight of prior preservation on the anchor images (0: off)"})
    loss: str = field(
        default="auto",
        metadata={
            "help": "model (anchor prompt's prediction), noise (denoising loss), auto (model; noise where the anchor is the target's own prompt)"
        },
    )
    filter_anchors: bool = field(default=True, metadata={"help": "with a judge: redraw anchor images that show the target"})
    anchor_image_dir: str | None = field(
        default=None,
        metadata={
            "help": "folder of your own anchor images (e.g. clean images of an implicit concept's trigger) instead of drawn ones"
        },
    )
    size: int | None = field(default=None, metadata={"help": "latent size (default: the model's)", "min": 1})
    iterations: int = field(default=200, metadata={"help": "optimisation steps", "min": 1})
    lr: float = field(
        default=2e-6, metadata={"help": "base learning rate (scaled by batch_size x grad_accum with scale_lr)", "gt": 0}
    )
    scale_lr: bool = field(
        default=True, metadata={"help": "effective lr = lr x batch_size x grad_accum (the reference's --scale_lr)"}
    )
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clipping (0: off)"})

    def effective_lr(self) -> float:
        """The learning rate the optimiser uses: ``lr`` times the images per step with ``scale_lr``."""
        return self.lr * self.batch_size * self.grad_accum if self.scale_lr else self.lr

    def validate(self) -> None:
        if min(self.n_images, self.sample_steps, self.batch_size, self.iterations) < 1 or self.lr <= 0 or self.prior_weight < 0:
            raise ConfigError("ablating needs n_images, sample_steps, batch_size, iterations >= 1, lr > 0, prior_weight >= 0")
        if self.loss not in ("auto", "model", "noise"):
            raise ConfigError(f"ablating's loss must be auto, model or noise, got {self.loss!r}")


def prompt_pairs(request, default_anchor: str) -> list[tuple[str, str, str]]:
    """(target prompt, anchor prompt, concept) triples: every phrase of every target with each template.
    An implicit target without an anchor is anchored on its own trigger prompts (see the module)."""
    pairs = []
    for t in request.targets:
        anchor = t.anchor if t.anchor is not None else default_anchor
        if not anchor.strip():
            raise ConfigError(
                f"ablating needs a non-empty anchor for {t.concept!r} (the images it maps the concept onto); pass --anchor"
            )
        for phrase in t.phrases():
            own = phrase if t.implicit and t.anchor is None else anchor
            pairs += [(p, a, t.concept) for p, a in zip(request.expand(phrase), request.expand(own))]
    return pairs


class AblatingObjective:
    def __init__(
        self, bench: Workbench, pairs: list[tuple[str, str, str]], config: AblatingConfig, gen: torch.Generator, judge=None
    ):
        self.bench, self.config = bench, config
        targets, anchors, concepts = zip(*pairs)
        self.targets, self.anchor_prompts = list(targets), list(anchors)
        self.target_cond = bench.cond(self.targets)
        own = [t == a for t, a in zip(targets, anchors)]
        judged = [judge is not None and judge.knows(c) for c in concepts]
        if any(o and not j for o, j in zip(own, judged)) and not config.anchor_image_dir:
            raise ConfigError("ablating a concept onto its own prompt needs images without it: a judge that filters drawn ones "
                              "(the testbed's) or your own (--set anchor_image_dir=DIR); or name an --anchor")  # fmt: skip
        if any(own) and config.loss == "model":
            raise ConfigError(
                "the model-based loss compares a prompt with itself when the anchor is the target's own prompt; use loss=noise or auto"
            )
        self.noise_based = [config.loss == "noise" or (config.loss == "auto" and o) for o in own]

        def shows_target(images: np.ndarray, i: int) -> np.ndarray:
            return judge.shows(images, concepts[i]) if judged[i] else np.zeros(len(images), dtype=bool)

        reject = shows_target if config.filter_anchors and any(judged) else None
        if config.anchor_image_dir:
            self.anchors = ImageBank.from_folder(bench, config.anchor_image_dir, list(anchors), what="anchor_image_dir")
        else:  # n_images anchor latents per pair, drawn once by the frozen model (prompt index = pair index)
            self.anchors = ImageBank.draw(
                bench,
                list(anchors),
                config.n_images,
                config.sample_steps,
                config.sample_guidance,
                gen,
                config.size,
                reject=reject,
            )

    def loss(self, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, bench = self.config, self.bench
        b, pair = self.anchors.batch(bench, cfg.batch_size, gen)
        anchor = self.anchors.cond.select(pair)
        with torch.no_grad():
            target = bench.predict(
                b.xt, b.t, bench.student_cond([self.anchor_prompts[i] for i in pair], frozen=anchor)
            )  # sg f_θ(x_t, c)
        noise_rows = torch.tensor([self.noise_based[int(i)] for i in pair], device=target.device).view(
            -1, *[1] * (target.dim() - 1)
        )
        target = torch.where(noise_rows, bench.target(b).to(target), target)
        target_cond = bench.student_cond([self.targets[i] for i in pair], frozen=self.target_cond.select(pair))
        terms = {"ablate": F.mse_loss(bench.predict(b.xt, b.t, target_cond).float(), target.float())}
        if cfg.prior_weight:
            anchor_s = bench.student_cond([self.anchor_prompts[i] for i in pair], frozen=anchor)
            terms["prior"] = cfg.prior_weight * F.mse_loss(bench.predict(b.xt, b.t, anchor_s).float(), bench.target(b).float())
        return terms


@register_method(
    "ablating",
    AblatingConfig,
    families=("sd", "sdxl", "sd3", "flux"),
    kind="fine-tuning",
    accepts=("judge", "checkpoints", "monitor"),
)
def ablating(pipe, request, config: AblatingConfig, adapter, progress: bool = True, checkpoint_dir: str | None = None, resume: bool = False,
             monitor=None, judge=None) -> MethodResult:  # fmt: skip
    """Ablating Concepts: the target prompt reproduces the anchor prompt's prediction on anchor images."""
    spec = parameter_spec(config.train_method)
    with Workbench.for_parameters(pipe, adapter, spec) as bench:
        params, info = trainable_parameters(bench, spec, config.lora_rank)
        gen = torch.Generator().manual_seed(config.seed + 7)
        objective = AblatingObjective(bench, prompt_pairs(request, config.default_anchor), config, gen, judge)
        info.update(anchor_images=len(objective.anchors.latents), anchor_images_rejected=objective.anchors.rejected,
                    noise_based_pairs=int(sum(objective.noise_based)))  # fmt: skip
        settings = config.settings(checkpoint_dir, resume, lr=config.effective_lr(), optimizer="adamw",
                                   weight_decay=config.weight_decay, grad_clip=config.grad_clip or None)  # fmt: skip
        return fit(
            bench, params, objective, settings, progress, desc="ablating", info=info, lora=bool(config.lora_rank), monitor=monitor
        )
