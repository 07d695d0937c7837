"""SAeUron — concept unlearning with a sparse autoencoder on UNet activations (Cywiński & Deja,
arXiv 2501.18052; cywinski/SAeUron at 1a4302a), as a guard: no weight of the model changes.

1. **Activations.** The output of one cross-attention transformer block (default: the second
   transformer of the first, lowest-resolution cross-attention up block — SD 1.x's
   ``unet.up_blocks.1.attentions.1``, the release's block for objects; ``attentions.2`` for styles),
   conditional branch only, at every sampler step; each spatial position is one vector.
   Collected here from the pipeline's own samples of the target prompts (each phrase, bare and in
   the templates) and of neutral prompts (the model's retain objects), ``images`` seeds each: a random
   ``positions_per_map`` of every map train the SAE, and a second sampling pass codes every map for the statistics
   (so memory stays bounded on SD-sized maps).
2. **Sparse autoencoder** (release: ``SAE/sae.py``): ``z = TopK(ReLU(W_enc (x − b_dec) + b_enc))``,
   ``x̂ = z W_dec + b_dec``, untied, ``W_dec`` initialised as ``W_encᵀ`` with unit-norm rows kept unit
   (their gradient's parallel part removed), ``b_dec`` the first batch's geometric median; expansion 16,
   k = 32; loss ``FVU + AuxK/32`` (the 640-latent auxiliary reconstruction of the residual by latents dead
   for ``dead_tokens`` tokens); Adam (eps 6.25e-10) lr 4e-4 decayed linearly to 0, clipping 1. Batches of
   ``batch`` vectors; ``train_steps`` steps (the release's 5 epochs over 4 M maps do not fit a CPU).
   Training uses per-token TopK (the release trains with batch-TopK and infers per token).
3. **Features of the concept**, per sampler step ``t`` (release: ``unlearning_utils.py``): ``μ_c``, ``μ_o``
   = mean over prompts of the spatially averaged code for the target / neutral prompts;
   ``score = μ_c / Σμ_c − μ_o / Σμ_o``; the features above the ``percentile`` quantile of the scores.
4. **Intervention** (``utils/hooks.py``): a forward hook on the block, on both guidance branches: for
   each selected feature ``i`` whose code exceeds ``μ_all(i, t)`` (the mean of the groups' means), the
   code becomes ``z_i · γ · μ_c(i, t)`` (γ = −1, the release's style setting); the block's output becomes
   ``x + (x̂' − x̂)``, the original plus the change of the reconstruction. The release writes
   ``x̂' + (x̂ − x)`` (its error term has the opposite sign: ``2x̂ − x`` where nothing is edited);
   ``error=released`` reproduces it. The step ``t`` is the sampler step whose timestep is nearest the
   denoiser's input timestep (the release counts calls; a timestep also serves attacks that call the
   denoiser directly).

The SAE is trained on the pipeline itself (a few CPU minutes on the testbed), and saved with the guard.
UNet families (SD 1.x/2.x, SDXL) with the named block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from erasekit.core.attachments import Attachment, get_module, register_attachment
from erasekit.core.config import MethodConfig
from erasekit.core.errors import ConfigError, IncompatibleErasureError
from erasekit.core.registry import MethodResult, register_method
from erasekit.core.request import ErasureRequest
from erasekit.methods.diffusion.closed_form import augmented_prompts
from erasekit.training.sae import SAEConfig, TopKSAE, train_sae


@dataclass
class SAeUronConfig(MethodConfig):
    block: str | None = field(
        default=None,
        metadata={"help": "transformer block the SAE reads (default: the 2nd of the first cross-attention up block)"},
    )
    expansion: int = field(default=16, metadata={"help": "latents per input channel", "min": 1})
    k: int = field(default=32, metadata={"help": "active latents per vector (TopK)", "min": 1})
    train_steps: int = field(default=2000, metadata={"help": "SAE optimisation steps", "min": 1})
    batch: int = field(default=4096, metadata={"help": "vectors per SAE step", "min": 1})
    lr: float = field(default=4e-4, metadata={"help": "Adam learning rate (linear decay to 0)", "gt": 0})
    auxk_alpha: float = field(default=1 / 32, metadata={"help": "weight of the AuxK loss"})
    dead_tokens: int = field(
        default=10_000_000, metadata={"help": "tokens without firing after which a latent is dead", "min": 1}
    )
    images: int = field(default=2, metadata={"help": "seeds per collection prompt", "min": 1})
    positions_per_map: int = field(
        default=64, metadata={"help": "spatial positions kept per map for training (memory)", "min": 1}
    )
    steps: int | None = field(default=None, metadata={"help": "sampler steps (default: the model's recommended, else 50)"})
    guidance: float | None = field(default=None, metadata={"help": "collection guidance (default: the model's, else 7.5)"})
    percentile: float = field(
        default=99.999, metadata={"help": "features above this percentile of the scores, per step", "max": 100}
    )
    gamma: float = field(default=-1.0, metadata={"help": "γ: a selected code becomes z · γ · μ_c", "min": -1e6})
    error: str = field(default="corrected", metadata={"help": "corrected: x + (x̂' − x̂); released: x̂' + (x̂ − x)"})
    seed: int = field(default=0, metadata={"help": "SAE initialisation and batch order"})

    def validate(self) -> None:
        if self.error not in ("corrected", "released"):
            raise ConfigError(f"error must be corrected or released, got {self.error!r}")


def feature_scores(mean_target: torch.Tensor, mean_other: torch.Tensor) -> torch.Tensor:
    """``μ_c / Σμ_c − μ_o / Σμ_o`` per step (rows) and feature (columns)."""
    return mean_target / (mean_target.sum(-1, keepdim=True) + 1e-8) - mean_other / (mean_other.sum(-1, keepdim=True) + 1e-8)


@register_attachment
class SAeUronGuard(Attachment):
    """The SAE intervention hook of the module docstring."""

    kind = "saeuron"

    def __init__(self, block: str, sae: dict[str, torch.Tensor], k: int, timesteps: torch.Tensor, selected: torch.Tensor,
                 mean_target: torch.Tensor, mean_all: torch.Tensor, gamma: float, error: str) -> None:  # fmt: skip
        self.block, self.k, self.gamma, self.error = block, int(k), float(gamma), error
        self.sae_tensors = sae
        self.timesteps, self.selected = timesteps, selected  # [S], bool [S, n_latents]
        self.mean_target, self.mean_all = mean_target, mean_all  # [S, n_latents]
        self._current_t: dict = {}

    def _sae(self, device, dtype=torch.float32) -> TopKSAE:
        w_enc = self.sae_tensors["encoder.weight"]
        sae = TopKSAE(w_enc.shape[1], w_enc.shape[0], self.k)
        sae.load_state_dict(self.sae_tensors)
        return sae.to(device, dtype).eval()

    def install(self, pipe) -> list:
        module = get_module(pipe, self.block)
        cache: dict = {}

        def hook(_m, args, kwargs, out):
            hidden = out[0] if isinstance(out, tuple) else out.sample if hasattr(out, "sample") else out
            if hidden.dim() != 4:
                raise IncompatibleErasureError(
                    f"saeuron: {self.block} gives {hidden.dim()}-d outputs; a [B, C, H, W] map is needed"
                )
            t = self._current_t.get("t")
            step = 0 if t is None else int((self.timesteps.to(t.device).float() - float(t)).abs().argmin())
            device = hidden.device
            if device not in cache:
                cache[device] = self._sae(device)
            sae = cache[device]
            b, c, h, w = hidden.shape
            x = hidden.float().permute(0, 2, 3, 1).reshape(-1, c)
            with torch.no_grad():
                z = sae.encode(x)
            edit = self.selected[step].to(device) & (z > self.mean_all[step].to(device))
            if not bool(edit.any()):
                return out
            z_new = torch.where(edit, z * self.gamma * self.mean_target[step].to(device), z)
            recon, recon_new = sae.decode(z), sae.decode(z_new)
            new = x + (recon_new - recon) if self.error == "corrected" else recon_new + (recon - x)
            new = new.reshape(b, h, w, c).permute(0, 3, 1, 2).to(hidden.dtype)
            if isinstance(out, tuple):
                return (new, *out[1:])
            if hasattr(out, "sample"):
                out.sample = new
                return out
            return new

        denoiser = pipe.unet

        def read_t(_m, args, kwargs):
            t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            self._current_t["t"] = (t.flatten()[0] if torch.is_tensor(t) else torch.tensor(float(t))) if t is not None else None

        return [
            denoiser.register_forward_pre_hook(read_t, with_kwargs=True),
            module.register_forward_hook(hook, with_kwargs=True),
        ]

    def config(self) -> dict:
        return {"block": self.block, "k": self.k, "gamma": self.gamma, "error": self.error}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"sae.{k}": v.float().contiguous() for k, v in self.sae_tensors.items()}
        out.update(timesteps=self.timesteps.float(), selected=self.selected.to(torch.uint8), mean_target=self.mean_target.float(),
                   mean_all=self.mean_all.float())  # fmt: skip
        return out

    @classmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "SAeUronGuard":
        sae = {k[len("sae.") :]: v for k, v in tensors.items() if k.startswith("sae.")}
        return cls(config["block"], sae, config["k"], tensors["timesteps"], tensors["selected"].bool(), tensors["mean_target"],
                   tensors["mean_all"], config["gamma"], config["error"])  # fmt: skip


def collection_prompts(request: ErasureRequest, neutral: list[str]) -> tuple[list[str], list[str]]:
    """``(target prompts, neutral prompts)``: each phrase of each target bare and in the templates
    (default "a photo of {}", ...); the retain objects, anchors and preserved concepts."""
    target = [p for _, p in augmented_prompts(request)]
    anchors = [t.anchor for t in request.targets if t.anchor]
    return target, [*neutral, *anchors, *request.preserve_prompts()]


def _conditional(hidden: torch.Tensor, images: int) -> torch.Tensor:
    """The conditional rows of a block output: the second half of a guided ``[uncond; cond]`` batch."""
    return hidden[images:] if hidden.shape[0] == 2 * images else hidden


@torch.no_grad()
def run_prompts(pipe, adapter, block: str, prompts: list[str], images: int, steps: int, guidance: float, on_map,
                progress: bool, desc: str) -> torch.Tensor:  # fmt: skip
    """Sample ``images`` seeds of every prompt with ``block``'s conditional output handed to
    ``on_map(prompt_index, step, maps [images, HW, C])`` at every step; returns the steps' timesteps."""
    from erasekit.training.diffusion import Workbench

    bench = Workbench(pipe, adapter, [])
    module = get_module(pipe, block)
    where = {"prompt": 0, "step": 0}

    def hook(_m, _a, out):
        hidden = out[0] if isinstance(out, tuple) else out.sample if hasattr(out, "sample") else out
        cond = _conditional(hidden.detach().float(), images)
        on_map(where["prompt"], where["step"], cond.permute(0, 2, 3, 1).flatten(1, 2))
        where["step"] += 1

    handle = module.register_forward_hook(hook)
    dtype = next(pipe.unet.parameters()).dtype
    try:
        for i, p in enumerate(tqdm(prompts, desc=desc, disable=not progress, unit="prompt")):
            where.update(prompt=i, step=0)
            x = bench.seed_latents(list(range(images)), dtype)
            bench.sample_composed([(bench.cond([p] * images).to(dtype), 1.0)], x, steps, guidance, images)
    finally:
        handle.remove()
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    return sched.timesteps[: where["step"]].clone()


def default_block(pipe) -> str:
    """The second transformer (or the only one) of the first up block that has cross-attention."""
    for i, up in enumerate(pipe.unet.up_blocks):
        attentions = getattr(up, "attentions", None)
        if attentions:
            return f"unet.up_blocks.{i}.attentions.{min(1, len(attentions) - 1)}"
    raise ConfigError("saeuron: the UNet has no cross-attention up block (set block=unet.<path of a transformer block>)")


@register_method("saeuron", SAeUronConfig, families=("sd", "sdxl"), kind="guard", accepts=("profile",))
def saeuron(pipe, request: ErasureRequest, config: SAeUronConfig, adapter, progress: bool = True, profile=None) -> MethodResult:
    """Guard: a sparse autoencoder on a UNet block's activations, the concept's features damped at sampling."""
    block = config.block or default_block(pipe)
    try:
        get_module(pipe, block)
    except IncompatibleErasureError:
        raise ConfigError(f"saeuron: the model has no block {block!r} (set block=unet.<path of a transformer block>)") from None
    neutral = profile.retain_prompts(avoid=tuple(request.concepts)) if profile is not None else []
    target, others = collection_prompts(request, neutral)
    if not others:
        raise ConfigError("saeuron needs neutral prompts (the model's retain objects, an --anchor or --preserve)")
    sampling = dict(profile.sampling) if profile is not None else {}
    steps = config.steps or int(sampling.get("steps", 50))
    guidance = float(config.guidance if config.guidance is not None else sampling.get("guidance_scale", 7.5))
    prompts = target + others
    gen = torch.Generator().manual_seed(config.seed)
    vectors: list[torch.Tensor] = []

    def keep(_p: int, _s: int, maps: torch.Tensor) -> None:  # a random subset of each map's positions
        flat = maps.reshape(-1, maps.shape[-1])
        vectors.append(flat[torch.randperm(len(flat), generator=gen)[: config.positions_per_map]].cpu())

    timesteps = run_prompts(pipe, adapter, block, prompts, config.images, steps, guidance, keep, progress,
                            "saeuron: activations")  # fmt: skip
    data = torch.cat(vectors)
    sae_config = SAEConfig(config.expansion, config.k, config.train_steps, config.batch, config.lr, config.auxk_alpha,
                           config.dead_tokens, config.seed)  # fmt: skip
    sae, stats = train_sae(data.to(pipe.device), sae_config, progress, "saeuron: SAE")
    sums = torch.zeros(len(prompts), len(timesteps), sae.w_dec.shape[0])

    def code(p: int, step: int, maps: torch.Tensor) -> None:  # the spatially averaged code, averaged over seeds
        sums[p, step] += sae.encode(maps.to(pipe.device)).mean(1).mean(0).cpu()

    run_prompts(pipe, adapter, block, prompts, config.images, steps, guidance, code, progress, "saeuron: features")
    mean_target, mean_other = sums[: len(target)].mean(0), sums[len(target) :].mean(0)
    scores = feature_scores(mean_target, mean_other)
    threshold = torch.quantile(scores, config.percentile / 100, dim=-1, keepdim=True)
    selected = scores > threshold
    state = {k: v.detach().cpu() for k, v in sae.state_dict().items()}
    guard = SAeUronGuard(block, state, config.k, timesteps, selected, mean_target, (mean_target + mean_other) / 2,
                         config.gamma, config.error)  # fmt: skip
    info = {**stats, "vectors": len(data), "features_per_step": selected.sum(-1).tolist(), "steps": steps}
    if not math.isfinite(stats["fvu"]):
        raise ConfigError("saeuron: the SAE's reconstruction is not finite (lower lr)")
    return MethodResult({}, info, attachment=guard)
