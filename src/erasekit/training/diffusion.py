"""The diffusion arithmetic every fine-tuning method shares: noising, targets, and sampling with the
frozen model.

Two objectives, chosen by the family adapter:

- ``ddpm`` (SD 1.x/2.x, SDXL, the testbed): ``x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε`` on the pipeline's discrete
  schedule; the denoiser predicts ``ε`` or ``v = √ᾱ_t ε − √(1−ᾱ_t) x₀`` (``prediction_type``).
- ``flow`` (SD3, Flux): ``x_σ = (1−σ) x₀ + σ ε`` with ``σ = t / 1000``; the denoiser predicts the
  velocity ``ε − x₀``.

ESD-style losses combine denoiser outputs at the same ``(x_t, t)`` with weights that sum to one
(``(1−η) f(c) + η f(∅)``); such affine combinations mean the same thing in every parametrisation, so
they need no conversion. Denoising losses use :meth:`Workbench.target`.

A :class:`Workbench` keeps the user's pipeline as the frozen *teacher* (its weights are never
modified) and deep copies of the components a method trains as the *student*. Use it as a context
manager: inside, the teacher's parameters have ``requires_grad`` off (so gradients that flow
*through* a frozen denoiser into a trained text encoder never accumulate in the user's model), and
the flags are restored on exit.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from erasekit.core.errors import ConfigError, UnsupportedModelError
from erasekit.core.guards import guards_of
from erasekit.models.diffusion import FamilyAdapter
from erasekit.models.diffusion.base import Conditioning


@dataclass
class NoisedBatch:
    x0: torch.Tensor
    noise: torch.Tensor
    xt: torch.Tensor
    t: torch.Tensor


class Workbench:
    """Teacher (the pipeline, frozen) and student (trainable copies of ``components``) of one method run."""

    def __init__(self, pipe, adapter: FamilyAdapter, components: list[str] | tuple[str, ...]):
        self.pipe = pipe
        self.adapter = adapter
        self.device = pipe.device if hasattr(pipe, "device") else torch.device("cpu")
        unknown = [c for c in components if not isinstance(getattr(pipe, c, None), nn.Module)]
        if unknown:
            raise ConfigError(f"the {adapter.name} pipeline has no component {', '.join(unknown)} to train")
        self.student: dict[str, nn.Module] = {}
        for name in components:
            module = copy.deepcopy(getattr(pipe, name))
            module.train(False)  # dropout-free, as at inference; the optimiser is what trains it
            if next(module.parameters()).dtype in (torch.float16, torch.bfloat16):
                module.float()  # train float32 master weights (mixed precision autocasts the compute)
            for p in module.parameters():
                p.requires_grad_(False)
            self.student[name] = module
        self.denoiser_name = adapter.denoiser
        sched_config = dict(pipe.scheduler.config)
        if adapter.objective == "ddpm":
            from diffusers import DDIMScheduler, DDPMScheduler

            self.train_scheduler = DDPMScheduler.from_config(sched_config)
            self.sample_scheduler = DDIMScheduler.from_config(
                {**sched_config, "clip_sample": sched_config.get("clip_sample", False)}
            )
            self.prediction_type = self.train_scheduler.config.prediction_type
            if self.prediction_type not in ("epsilon", "v_prediction"):
                raise ConfigError(
                    f"prediction type {self.prediction_type!r} is not supported for training (epsilon or v_prediction)"
                )
        else:
            self.sample_scheduler = copy.deepcopy(pipe.scheduler)
            self.prediction_type = "flow"
        self.num_train_timesteps = int(sched_config.get("num_train_timesteps", 1000))
        self._flags: list[tuple[nn.Parameter, bool]] = []

    def __enter__(self) -> "Workbench":
        for name in self.adapter.trainable_components(self.pipe):
            for p in getattr(self.pipe, name).parameters():
                self._flags.append((p, p.requires_grad))
                p.requires_grad_(False)
        return self

    def __exit__(self, *exc) -> None:
        for p, flag in self._flags:
            p.requires_grad_(flag)
        self._flags = []

    @staticmethod
    def for_parameters(pipe, adapter: FamilyAdapter, spec) -> "Workbench":
        """A workbench whose student holds exactly the components the parameter set ``spec`` touches."""
        keys = adapter.parameter_set(pipe, spec)
        return Workbench(pipe, adapter, sorted({k.split(".", 1)[0] for k in keys}))

    @property
    def trains_text(self) -> bool:
        return bool(self.student.keys() - {self.denoiser_name})

    def student_cond(self, prompts: list[str], frozen: Conditioning | None = None) -> Conditioning:
        """Conditioning the student sees: through its trained text encoders, else ``frozen`` (precomputed)."""
        if self.trains_text:
            return self.cond(prompts, student=True)
        return frozen if frozen is not None else self.cond(prompts)

    # -- parameters ------------------------------------------------------------------------------------
    def trainable(self, spec) -> dict[str, nn.Parameter]:
        """The student's parameters named by ``spec`` (see ``FamilyAdapter.parameter_set``), made trainable."""
        view = PipeView(self.pipe, self.student)
        params = self.adapter.parameter_set(view, spec)
        outside = sorted({k.split(".", 1)[0] for k in params} - set(self.student))
        if outside:
            raise ConfigError(f"parameter set {spec!r} touches {', '.join(outside)}, which this method does not train")
        for p in params.values():
            p.requires_grad_(True)
        return params

    # -- conditioning and prediction ---------------------------------------------------------------------
    def cond(self, prompts: list[str], student: bool = False, token_hook=None) -> Conditioning:
        """Conditioning of ``prompts``; through the student's text encoders when ``student`` (with grad)."""
        modules = {k: v for k, v in self.student.items() if k != self.denoiser_name} if student else None
        if student or token_hook is not None:
            return self.adapter.conditioning(self.pipe, prompts, modules=modules or None, token_hook=token_hook)
        with torch.no_grad():
            return self.adapter.conditioning(self.pipe, prompts)

    def predict(self, xt: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Denoiser output with gradients: the student's denoiser if it is trained, else the frozen
        teacher's (gradients then reach only the inputs, e.g. a trained text encoder's ``cond``)."""
        denoiser = self.student.get(self.denoiser_name, getattr(self.pipe, self.denoiser_name))
        dtype = next(denoiser.parameters()).dtype
        return self.adapter.predict(denoiser, xt.to(dtype), t, cond.to(dtype))

    @torch.no_grad()
    def teacher_predict(self, xt: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        denoiser = getattr(self.pipe, self.denoiser_name)
        dtype = next(denoiser.parameters()).dtype
        return self.adapter.predict(denoiser, xt.to(dtype), t, cond.to(dtype)).float()

    # -- noising and targets ---------------------------------------------------------------------------
    def sample_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Uniform training timesteps (scheduler units: integers for ddpm, σ·1000 for flow)."""
        if self.prediction_type == "flow":
            return torch.rand(n, generator=gen) * self.num_train_timesteps
        return torch.randint(0, self.num_train_timesteps, (n,), generator=gen)

    def noised(self, x0: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> NoisedBatch:
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        t = t.to(self.device)
        if self.prediction_type == "flow":
            s = (t.float() / self.num_train_timesteps).view(-1, *[1] * (x0.dim() - 1)).to(x0)
            xt = (1 - s) * x0 + s * noise
        else:
            xt = self.train_scheduler.add_noise(x0, noise, t.cpu()).to(x0)
        return NoisedBatch(x0, noise, xt, t)

    def target(self, b: NoisedBatch) -> torch.Tensor:
        """The denoising target of ``b``: ε, v = √ᾱ ε − √(1−ᾱ) x₀, or the flow velocity ε − x₀."""
        if self.prediction_type == "flow":
            return b.noise - b.x0
        if self.prediction_type == "v_prediction":
            return self.train_scheduler.get_velocity(b.x0, b.noise, b.t.cpu()).to(b.x0)
        return b.noise

    def latents_shape(self, n: int, size: int | None = None) -> tuple[int, ...]:
        """Shape of ``n`` latents at the model's resolution, or ``size`` x ``size`` (a multiple of the
        denoiser's downsampling factor: 2^(levels − 1) for a UNet, the patch size for a transformer)."""
        shape = self.adapter.latent_shape(self.pipe, n)
        if size is None:
            return shape
        config = getattr(self.pipe, self.adapter.denoiser).config
        levels = len(getattr(config, "block_out_channels", ()) or ())
        multiple = (
            2 ** (levels - 1)
            if levels
            else int(getattr(config, "patch_size", 1) or 1) * (2 if self.adapter.name == "flux" else 1)
        )
        if size < 1 or size % multiple:
            raise ConfigError(f"size (latent side) must be a positive multiple of {multiple} for this model, got {size}")
        return (*shape[:2], size, size)

    # -- sampling with the frozen model -------------------------------------------------------------------
    @torch.no_grad()
    def partial_denoise(
        self,
        cond: Conditioning,
        uncond: Conditioning | None,
        steps: int,
        stop: int,
        guidance: float,
        gen: torch.Generator,
        size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the *teacher* ``stop`` of ``steps`` sampling steps from pure noise with guidance.

        Returns ``(x, t)``: the latents reached and the timestep they are at, ``timesteps[stop]`` of the
        sampler's schedule. That is the timestep a loss on ``x`` must use (the CompVis code queries
        the UNet 40–60 DDPM steps away from where its latent sits; see ``methods/diffusion/esd.py``).
        ``0 <= stop <= steps``; ``stop == steps`` runs the whole sampler and returns the clean latents
        with ``t = 0``.
        """
        if not 0 <= stop <= steps:
            raise ConfigError(f"partial denoising stop {stop} must lie in [0, {steps}]")
        n = cond.tokens.shape[0]
        guided = ComposedGuidance(self.teacher_predict, uncond, [(cond, 1.0)], guidance, (), [], n)
        x = torch.randn(self.latents_shape(n, size), generator=gen).to(self.device, cond.tokens.dtype)
        return self.run_sampler(x, steps, stop, guided)

    def run_sampler(self, x: torch.Tensor, steps: int, stop: int, guided, scheduler=None,
                    generators: list[torch.Generator] | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Run ``stop`` of ``steps`` steps of the methods' sampler (DDIM for the ddpm objective; or
        ``scheduler``, e.g. the pipeline's own) from the initial latents ``x`` (pure noise, before
        ``init_noise_sigma``); ``guided(x_in, t [N]) -> output`` is the (guided) denoiser output;
        ``generators`` (one per row) feed a stochastic scheduler's noise, as diffusers' pipelines pass
        theirs. Returns ``(x, t)`` as :meth:`partial_denoise`."""
        n = x.shape[0]
        sched = copy.deepcopy(self.sample_scheduler if scheduler is None else scheduler)
        takes = set(inspect.signature(sched.step).parameters)
        step_kwargs = {"generator": generators} if generators is not None and "generator" in takes else {}
        if self.prediction_type == "flow":
            sched.set_timesteps(steps, device=self.device)
            sigmas = sched.sigmas
            for i in range(stop):
                v = guided(x, sched.timesteps[i].expand(n))
                x = x + (sigmas[i + 1] - sigmas[i]) * v.to(x.dtype)
            t_end = sched.timesteps[stop] if stop < steps else torch.zeros((), device=self.device)
            return x, t_end.expand(n).clone()
        sched.set_timesteps(steps)
        x = x * sched.init_noise_sigma
        # a full run walks every timestep the scheduler set (PNDM sets steps + 1), as diffusers' loop does
        for i in range(len(sched.timesteps) if stop >= steps else stop):
            t = sched.timesteps[i]
            out = guided(sched.scale_model_input(x, t), t.expand(n).to(self.device))
            x = sched.step(out.to(x.dtype), t, x, **step_kwargs).prev_sample
        t_end = sched.timesteps[stop] if stop < steps else torch.zeros((), dtype=torch.long)
        return x, t_end.expand(n).to(self.device).clone()

    def seed_latents(self, seeds: list[int], dtype: torch.dtype, hw: tuple[int, int] | None = None,
                     generators: list[torch.Generator] | None = None) -> torch.Tensor:  # fmt: skip
        """Each seed's initial noise as diffusers draws it (``torch.randn`` of a CPU generator per image,
        as ``randn_tensor`` with a list of generators); ``hw``: latent height and width (default the
        model's). The generators, having drawn it, are appended to ``generators`` when given (a
        stochastic scheduler draws its noise from them next, as in diffusers' pipelines)."""
        shape = self.latents_shape(1)
        if hw is not None:
            shape = (*shape[:-2], *hw)
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        noise = [torch.randn(shape, generator=g, dtype=dtype) for g in gens]
        if generators is not None:
            generators.extend(gens)
        return torch.cat(noise).to(self.device)

    @torch.no_grad()
    def sample_composed(self, parts: Sequence[tuple[Conditioning, Any]], x: torch.Tensor, steps: int, guidance: float,
                        batch_size: int, generators: list[torch.Generator] | None = None) -> torch.Tensor:  # fmt: skip
        """Clean latents from initial latents ``x`` (``batch_size`` rows at a time) with composed guidance
        ``ε = f(∅) + g Σ_i w_i (f(c_i)' − f(∅))`` over ``parts = [(c_i, w_i)]`` (one part of weight 1:
        classifier-free guidance; a weight is a number or a per-row tensor ``[N, 1, ...]``), where the
        pipeline's guards (:mod:`erasekit.core.guards`) may replace ``∅`` and each ``f(c_i)``. Sampled
        with the pipeline's own scheduler, as ``pipe(...)`` samples (a stochastic one draws from
        ``generators``, one per row of ``x``, as :meth:`seed_latents` leaves them)."""
        guards = guards_of(self.pipe)
        negatives = [text for text in (g.negative() for g in guards) if text is not None]
        overrides = [u for u in (g.unconditional(self.pipe, self.adapter) for g in guards) if u is not None]
        if len(negatives) + len(overrides) > 1:
            raise ConfigError("two guards replace the unconditional branch (negative prompts, steering); apply one of them")
        uncond_one = overrides[0] if overrides else self.cond(negatives) if negatives else self.adapter.unconditional(self.pipe)
        extras_one = [self.cond(g.extra_prompts()) if g.extra_prompts() else None for g in guards]
        out = []
        for a in range(0, x.shape[0], batch_size):
            rows = slice(a, a + batch_size)
            n = x[rows].shape[0]
            ps = [(c.select(rows), w[rows] if torch.is_tensor(w) else w) for c, w in parts]
            step = ComposedGuidance(self.teacher_predict, uncond_one, ps, guidance, guards, extras_one, n)
            gens = generators[rows] if generators is not None else None
            out.append(self.run_sampler(x[rows], steps, steps, step, scheduler=self.pipe.scheduler, generators=gens)[0])
        return torch.cat(out)

    @torch.no_grad()
    def sample_latents(
        self, prompts: list[str], steps: int, guidance: float, gen: torch.Generator, size: int | None = None, batch_size: int = 16
    ) -> torch.Tensor:
        """Clean latents ``x₀`` the *teacher* draws for ``prompts`` (one each), in batches."""
        uncond_one = self.cond([""])
        out = []
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            cond = self.cond(chunk)
            uncond = uncond_one.select(torch.zeros(len(chunk), dtype=torch.long))
            out.append(self.partial_denoise(cond, uncond, steps, steps, guidance, gen, size=size)[0])
        return torch.cat(out)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Latents ``x₀`` of ``images`` (``uint8 [N, H, W, 3]``) through the pipeline's VAE (posterior mean)."""
        vae = self.pipe.vae
        x = images.permute(0, 3, 1, 2).float().div(127.5).sub(1).to(self.device, vae.dtype)
        z = vae.encode(x).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (z - shift) * vae.config.scaling_factor

    @torch.no_grad()
    def decode_images(self, latents: torch.Tensor) -> np.ndarray:
        """``uint8 [N, H, W, 3]`` images of latents ``x₀`` (the inverse of :meth:`encode_images`)."""
        if latents.dim() != 4:
            raise UnsupportedModelError(f"decoding needs image-shaped latents [N, C, H, W], got shape {tuple(latents.shape)}")
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        x = vae.decode((latents / vae.config.scaling_factor + shift).to(self.device, vae.dtype)).sample
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class ComposedGuidance:
    """One sampling run's guided denoiser output ``(x, t) -> ε`` (see :meth:`Workbench.sample_composed`):
    every step lets each guard replace each part's conditioning (:meth:`Guard.condition`), predicts
    ``[∅; c_1 … c_k; guards' extra prompts]`` in one batch, lets each guard replace each direction ``d_i = f(c_i) − f(∅)`` in order (a state per guard and part, e.g. SLD's momentum;
    the step counted by calls), and combines ``f(∅) + g Σ_i w_i d_i``. Without guards, one part of
    weight 1 at ``g = 1`` returns ``f(c_1)`` alone (one prediction per step; ``uncond`` may then be
    None). ``uncond`` has one row (every image's) or ``n`` (one per image)."""

    def __init__(self, predict, uncond: Conditioning | None, parts: Sequence[tuple[Conditioning, Any]], guidance: float,
                 guards: tuple, extras: list[Conditioning | None], n: int) -> None:  # fmt: skip
        self.predict, self.parts, self.g, self.guards, self.n = predict, parts, float(guidance), guards, n
        self.plain = len(parts) == 1 and not torch.is_tensor(parts[0][1]) and parts[0][1] == 1.0
        if uncond is None and (guards or self.g != 1.0 or not self.plain):
            raise ConfigError(f"guidance {guidance} needs an unconditional branch; pass uncond or guidance 1")
        if uncond is not None and uncond.tokens.shape[0] != n:
            uncond = uncond.select(torch.zeros(n, dtype=torch.long))
        self.uncond = uncond
        #: each guard's extra conditionings, one row per image: [m * n] (prompt-major), and its m
        self.extras = [None if e is None else e.select(torch.arange(e.tokens.shape[0]).repeat_interleave(n)) for e in extras]
        self.counts = [0 if e is None else e.tokens.shape[0] for e in extras]
        self.states = [[g.start() for _ in parts] for g in guards]
        self.cond_states: list[list[Any]] = [[None for _ in parts] for _ in guards]
        self.step = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = 1 + len(self.parts)
        if not self.guards and self.g == 1.0 and self.plain:
            out = self.predict(x, t, self.parts[0][0])
            self.step += 1
            return out
        parts = []
        for j, (c, _) in enumerate(self.parts):
            for gi, guard in enumerate(self.guards):
                c, self.cond_states[gi][j] = guard.condition(self.cond_states[gi][j], self.step, c)
            parts.append(c)
        assert self.uncond is not None  # the constructor refuses None unless the plain path above is taken
        conds = [self.uncond, *parts] + [e for e in self.extras if e is not None]
        total = k + sum(self.counts)
        chunks = self.predict(torch.cat([x] * total), torch.cat([t] * total), Conditioning.cat(conds)).chunk(total)
        u, cs = chunks[0], chunks[1:k]
        ds = [c - u for c in cs]
        at = k
        for gi, guard in enumerate(self.guards):
            extra = list(chunks[at : at + self.counts[gi]])
            at += self.counts[gi]
            for j in range(len(cs)):
                ds[j], self.states[gi][j] = guard.guide(self.states[gi][j], self.step, self.g, u, cs[j], extra, ds[j])
        self.step += 1
        return u + self.g * sum((w.to(d) if torch.is_tensor(w) else w) * d for (_, w), d in zip(self.parts, ds))


@dataclass
class ImageBank:
    """Latents the frozen model drew (``n`` per prompt), with each one's prompt index and the prompts' conditioning."""

    latents: torch.Tensor
    prompt_of: torch.Tensor
    cond: Conditioning
    rejected: int = 0  # draws dropped by ``reject``

    @staticmethod
    def draw(bench: Workbench, prompts: list[str], n: int, steps: int, guidance: float, gen: torch.Generator, size: int | None,
             reject: Callable[[np.ndarray, int], np.ndarray] | None = None, max_rounds: int = 4) -> "ImageBank":  # fmt: skip
        """``n`` teacher draws per prompt. With ``reject(images, prompt_index) -> bool [N]`` (a judge), rejected
        draws are redrawn up to ``max_rounds`` times; a prompt keeps what it has then, and one left with no
        image at all is an error."""
        order = [i for i in range(len(prompts)) for _ in range(n)]
        latents = bench.sample_latents([prompts[i] for i in order], steps, guidance, gen, size=size)
        if reject is None:
            return ImageBank(latents, torch.tensor(order), bench.cond(prompts))
        kept: list[torch.Tensor] = []
        kept_order: list[int] = []
        rejected = 0
        for _ in range(max_rounds):
            images = bench.decode_images(latents)
            bad = np.zeros(len(order), dtype=bool)
            for i in set(order):
                rows = [r for r, o in enumerate(order) if o == i]
                bad[rows] = np.asarray(reject(images[rows], i), dtype=bool)
            rejected += int(bad.sum())
            kept += [latents[r] for r in np.flatnonzero(~bad)]
            kept_order += [order[r] for r in np.flatnonzero(~bad)]
            order = [order[r] for r in np.flatnonzero(bad)]
            if not order:
                break
            latents = bench.sample_latents([prompts[i] for i in order], steps, guidance, gen, size=size)
        missing = sorted(set(range(len(prompts))) - set(kept_order))
        if missing:
            raise ConfigError(f"every image the model drew for {prompts[missing[0]]!r} was rejected ({max_rounds} rounds); "
                              "choose another anchor or draw more images")  # fmt: skip
        return ImageBank(torch.stack(kept), torch.tensor(kept_order), bench.cond(prompts), rejected)

    @staticmethod
    def from_folder(bench: Workbench, folder: str, prompts: list[str], what: str = "image folder") -> "ImageBank":
        """The images of ``folder`` (at the model's resolution), each captioned with the prompts in turn."""
        from erasekit.core.io import load_image_folder

        latents = bench.encode_images(load_image_folder(folder, bench.adapter.image_size(bench.pipe), what))
        order = [i % len(prompts) for i in range(len(latents))]
        return ImageBank(latents, torch.tensor(order), bench.cond(prompts))

    def batch(self, bench: Workbench, size: int, gen: torch.Generator):
        idx = torch.randint(0, len(self.latents), (size,), generator=gen)
        b = bench.noised(self.latents[idx], bench.sample_t(size, gen), gen)
        return b, self.prompt_of[idx]


class PipeView:
    """The pipeline with some components replaced (for selecting the student's parameters by name)."""

    def __init__(self, pipe, overrides: dict[str, nn.Module]):
        self._pipe, self._overrides = pipe, overrides

    def __getattr__(self, name):
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._pipe, name)
