"""Image generation with fixed seeds, and labelled image grids.

Every image is tied to its own ``(prompt, seed)`` pair: its initial noise comes from a generator
seeded with ``seed`` alone, so an image does not depend on which other images share its batch.
That is what makes before/after comparisons of an erasure exact.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from erasekit.core import parallel
from erasekit.core.errors import InvalidInputError, NonFiniteError
from erasekit.core.guards import filter_images, guards_of
from erasekit.core.outputs import write_image


@dataclass
class SamplingConfig:
    """How images are sampled. ``None`` fields take the model's recommended value (testbed.json)."""

    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    batch_size: int = 128
    #: Image size in pixels (``None``: the model's own); a prompt set's rows may give one.
    height: int | None = None
    width: int | None = None

    def resolved(self, pipe) -> "SamplingConfig":
        """Fill ``None`` fields from the model's ``testbed.json`` (``sampling``) or SD's defaults (50, 7.5)."""
        rec = recommended_sampling(pipe)
        return SamplingConfig(
            steps=self.steps if self.steps is not None else rec.get("steps", 50),
            guidance_scale=self.guidance_scale if self.guidance_scale is not None else rec.get("guidance_scale", 7.5),
            negative_prompt=self.negative_prompt,
            batch_size=self.batch_size,
            height=self.height,
            width=self.width,
        )

    def validate(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise InvalidInputError(f"steps must be at least 1, got {self.steps}")
        if self.guidance_scale is not None and (not math.isfinite(self.guidance_scale) or self.guidance_scale < 0):
            raise InvalidInputError(f"guidance scale must be a finite number >= 0, got {self.guidance_scale}")
        if self.batch_size < 1:
            raise InvalidInputError(f"batch size must be at least 1, got {self.batch_size}")
        for name, size in (("height", self.height), ("width", self.width)):
            if size is not None and (size < 8 or size % 8):
                raise InvalidInputError(f"image {name} must be a multiple of 8 and at least 8, got {size}")

    def to_dict(self) -> dict:
        return asdict(self)


def recommended_sampling(pipe) -> dict:
    """The model's recommended sampling (a testbed's ``testbed.json``), if it has one."""
    from erasekit.models.profile import profile_of

    return dict(profile_of(pipe).sampling)


def check_prompt(pipe, prompt: str, what: str = "prompt") -> None:
    """Reject text the model cannot read: non-strings and text longer than a CLIP text encoder's
    context (it would be truncated silently). ``what`` names it in the error (prompt, concept...)."""
    if not isinstance(prompt, str):
        raise InvalidInputError(f"a {what} must be text, got {type(prompt).__name__}")
    for name in ("tokenizer", "tokenizer_2"):  # CLIP tokenizers (T5's longer context is the pipeline's own setting)
        tokenizer = getattr(pipe, name, None)
        if tokenizer is None or not callable(tokenizer):
            continue
        n = len(tokenizer(prompt).input_ids)
        limit = tokenizer.model_max_length
        if n > limit:
            shown = prompt if len(prompt) <= 40 else prompt[:40] + "..."
            raise InvalidInputError(
                f"{what} {shown!r} has {n} tokens; this model reads at most {limit} (the rest would be cut off), shorten it"
            )


def warn_unknown_words(prompt: str, vocabulary: set[str]) -> list[str]:
    """Words of ``prompt`` outside a closed vocabulary (the testbed's); they are tokenized into bytes."""
    unknown = [w for w in prompt.lower().replace(",", " ").split() if w not in vocabulary]
    if unknown:
        warnings.warn(f"words not in the model's vocabulary (the model never saw them): {', '.join(unknown)}", stacklevel=2)
    return unknown


@torch.no_grad()
def prompt_seeds(n_prompts: int, seeds: int) -> list[int]:
    """Seeds of ``n_prompts`` prompts with ``seeds`` images each, prompt by prompt: prompt ``i`` gets
    ``i*seeds .. i*seeds + seeds-1``. Distinct seeds keep the samples of different prompts independent
    (shared seeds correlate them: the initial noise in the watermark's corner decides the mark)."""
    return [i * seeds + s for i in range(n_prompts) for s in range(seeds)]


def generate(
    pipe,
    prompts: list[str],
    seeds: list[int],
    sampling: SamplingConfig | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> np.ndarray:
    """Generate one image per ``(prompts[i], seeds[i])``; returns ``uint8 [N, H, W, 3]``."""
    if len(prompts) != len(seeds):
        raise InvalidInputError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
    sampling = (sampling or SamplingConfig()).resolved(pipe)
    sampling.validate()
    for p in set(prompts):
        check_prompt(pipe, p)
    if sampling.negative_prompt is not None:
        check_prompt(pipe, sampling.negative_prompt, "negative prompt")
    guarded = bool(guards_of(pipe))
    if guarded and sampling.negative_prompt is not None:
        raise InvalidInputError("a guard is applied to this model: it sets the sampling itself, so pass no negative prompt")
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # one bar (ours) per call, not one per batch
    bs = sampling.batch_size

    def draw(rows: list[int]) -> np.ndarray:
        return _draw_batch(pipe, [prompts[i] for i in rows], [seeds[i] for i in rows], sampling, guarded)

    # under torchrun / accelerate: batch k drawn by rank k mod N, gathered
    out = parallel.current().map_batches(len(prompts), bs, draw, desc=desc, progress=progress and len(prompts) > bs)
    if not out:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.concatenate(out)


def _draw_batch(pipe, batch_prompts: list[str], batch_seeds: list[int], sampling: SamplingConfig, guarded: bool) -> np.ndarray:
    """One batch's images ``uint8 [n, H, W, 3]``: erasekit's guarded sampler or ``pipe(...)`` with
    each seed's generator; non-finite pixels are refused."""
    if guarded:
        images = sample_guarded(pipe, batch_prompts, batch_seeds, sampling)
    else:
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in batch_seeds]
        kwargs: dict = {}
        if sampling.height is not None or sampling.width is not None:
            kwargs.update(height=sampling.height, width=sampling.width)
        if sampling.negative_prompt is not None:
            kwargs["negative_prompt"] = [sampling.negative_prompt] * len(batch_prompts)
        result = pipe(
            prompt=batch_prompts,
            generator=gens,
            num_inference_steps=sampling.steps,
            guidance_scale=sampling.guidance_scale,
            output_type="np",
            **kwargs,
        )
        images = np.asarray(result.images)
    if not np.isfinite(images).all():
        half = getattr(pipe, "dtype", torch.float32) != torch.float32
        raise NonFiniteError(
            f"the model produced NaN or infinite pixels for {batch_prompts[0]!r} (guidance {sampling.guidance_scale}, "
            f"{sampling.steps} steps); lower the guidance" + (" or load the model in float32" if half else "")
        )
    batch = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    return filter_images(pipe, batch) if guarded else batch


@torch.no_grad()
def sample_guarded(pipe, prompts: list[str], seeds: list[int], sampling: SamplingConfig) -> np.ndarray:
    """Images ``float [N, H, W, 3]`` in ``[0, 1]`` of a pipeline with guards (:mod:`erasekit.core.guards`):
    erasekit's own sampler (the pipeline's scheduler, each seed's diffusers noise, classifier-free
    guidance; equal to ``pipe(...)`` without guards, tested), through which the guards act on every step.
    ``sampling`` must be resolved (steps and guidance set)."""
    from erasekit.models.diffusion import get_adapter
    from erasekit.training.diffusion import Workbench

    if sampling.steps is None or sampling.guidance_scale is None:
        raise InvalidInputError("sample_guarded needs resolved sampling (steps and guidance set): pass sampling.resolved(pipe)")
    bench = Workbench(pipe, get_adapter(pipe), [])
    denoiser = getattr(pipe, bench.adapter.denoiser)
    dtype = next(denoiser.parameters()).dtype
    hw = None
    if sampling.height is not None or sampling.width is not None:
        if bench.adapter.name == "sdxl":  # its micro-conditioning (time ids) would still name the default size
            raise InvalidInputError("with a guard, SDXL samples at its own size: pass no height or width")
        factor = int(getattr(pipe, "vae_scale_factor", 8))
        side = bench.latents_shape(1)[-1] * factor
        hw = ((sampling.height or side) // factor, (sampling.width or side) // factor)
    generators: list[torch.Generator] = []
    x = bench.seed_latents(seeds, dtype, hw, generators)
    cond = bench.cond(prompts).to(dtype)
    latents = bench.sample_composed([(cond, 1.0)], x, sampling.steps, sampling.guidance_scale, len(prompts), generators)
    vae = pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    decoded = vae.decode((latents / vae.config.scaling_factor + shift).to(vae.dtype)).sample
    return (decoded.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, captions: list[str] | None = None, cols: int | None = None, scale: int = 4) -> Image.Image:
    """Tile ``uint8 [N, H, W, 3]`` images (upscaled ``scale``x, nearest) with an optional caption under each."""
    n, h, w, _ = images.shape
    cols = cols or min(n, 8)
    rows = math.ceil(n / cols)
    tw, th = w * scale, h * scale
    font = ImageFont.load_default()
    lines = [c.split("\n") for c in captions] if captions else [[] for _ in range(n)]
    line_h = 11
    cap_h = (max((len(x) for x in lines), default=0) * line_h + 4) if captions else 0
    grid = Image.new("RGB", (cols * (tw + 4) + 4, rows * (th + cap_h + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k in range(n):
        r, c = divmod(k, cols)
        x0, y0 = 4 + c * (tw + 4), 4 + r * (th + cap_h + 4)
        grid.paste(Image.fromarray(images[k]).resize((tw, th), Image.NEAREST), (x0, y0))
        for j, line in enumerate(lines[k]):
            draw.text((x0, y0 + th + 2 + j * line_h), line[: max(1, tw // 6)], fill=(0, 0, 0), font=font)
    return grid


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save a PIL image atomically as an erasekit output (PNG, JPEG or WebP, from the suffix); an
    existing file there must be an image erasekit wrote (see :mod:`erasekit.core.outputs`)."""
    return write_image(image, path, "image")
