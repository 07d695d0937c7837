"""The arena an attack runs in: the attacked model, the reference model, the judge and the trials.

- ``pipe``: the model under attack (an erasure applied to copies of the components it changes, the
  oracle, or a base model). Its weights are only read, except by attacks on weights, which work on
  their own copies (:meth:`Arena.weights_copy`).
- ``reference``: the model that draws the concept (the pipeline before the erasure; for an oracle,
  the testbed it was derived from). White-box attacks take their targets from it: its images of the
  concept (UnlearnDiffAtk, concept inversion, latent inversion, relearning) and its predictions
  (P4D, the soft prompt), and text-only attacks take its text encoder (Ring-A-Bell, token search).
- ``judge``: ``shows(images, concept) -> bool [N]`` (the testbed classifier on the testbed).

Images are sampled by :meth:`Arena.generate` with the pipeline's own scheduler, guidance and
per-seed initial noise (``torch.randn`` of each seed's CPU generator, as diffusers' ``randn_tensor``
with a list of generators), so a plain prompt gives the image ``pipe(prompt)`` gives for that seed;
conditionings may carry inserted vectors, several weighted parts (composed guidance), or start
from given initial latents.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from erasekit.attacks.base import Trial
from erasekit.core.guards import filter_images
from erasekit.generation import prompt_seeds
from erasekit.models.diffusion import get_adapter
from erasekit.models.diffusion.base import Conditioning
from erasekit.training.diffusion import Workbench


def with_copies(pipe, names: list[str]):
    """A shallow copy of ``pipe`` with deep copies of the components ``names``."""
    clone = copy.copy(pipe)
    for name in names:
        setattr(clone, name, copy.deepcopy(getattr(pipe, name)))
    return clone


class Arena:
    """See the module docstring."""

    def __init__(self, pipe, reference, judge, concept: str, prompts: list[str], seeds: int, steps: int,
                 guidance: float, batch_size: int = 32, profile=None, erasure=None, base=None) -> None:  # fmt: skip
        from erasekit.models.profile import ModelProfile

        self.pipe, self.reference = pipe, reference
        self.erasure, self.base = erasure, base  # ``pipe`` is ``base`` with ``erasure`` applied (to copies)
        self.profile = profile or ModelProfile()
        self.adapter = get_adapter(pipe)
        self.bench = Workbench(pipe, self.adapter, [])
        self.ref = self.bench if reference is pipe else Workbench(reference, get_adapter(reference), [])
        self.judge = judge
        self.concept = concept
        self.prompts = list(prompts)
        # prompt i uses seeds i*seeds .. i*seeds+seeds-1: shared seeds would correlate the trials of
        # different prompts (on the testbed the initial noise in a corner decides the watermark)
        flat = prompt_seeds(len(self.prompts), seeds)
        self.trials = [Trial(k, self.prompts[k // seeds], s, k // seeds) for k, s in enumerate(flat)]
        self.steps, self.guidance, self.batch_size = int(steps), float(guidance), int(batch_size)
        self.device = self.bench.device
        self._ref_latents: torch.Tensor | None = None
        self._uncond: dict[int, Conditioning] = {}

    # -- judging -------------------------------------------------------------------------------------
    def shows(self, images: np.ndarray) -> np.ndarray:
        """Per image: does it show the attacked concept?"""
        if len(images) == 0:
            return np.zeros(0, dtype=bool)
        return np.asarray(self.judge.shows(images, self.concept), dtype=bool)

    # -- conditioning --------------------------------------------------------------------------------
    def cond(self, prompts: list[str], token_hook=None, reference: bool = False, grad: bool = False) -> Conditioning:
        """Conditioning of ``prompts`` by the attacked (or the reference) model's text encoders;
        ``token_hook`` edits the token embeddings (inserted vectors); ``grad`` keeps the graph."""
        bench = self.ref if reference else self.bench
        if grad or token_hook is not None:
            with torch.set_grad_enabled(grad):
                return bench.adapter.conditioning(bench.pipe, prompts, token_hook=token_hook)
        return bench.cond(prompts)

    def uncond(self, n: int, reference: bool = False) -> Conditioning:
        key = int(reference)
        if key not in self._uncond:
            self._uncond[key] = self.cond([""], reference=reference)
        return self._uncond[key].select(torch.zeros(n, dtype=torch.long))

    # -- sampling ------------------------------------------------------------------------------------
    def initial_latents(self, seeds: list[int], reference: bool = False, generators: list | None = None) -> torch.Tensor:
        """Each seed's initial noise as diffusers draws it (a CPU generator per image, appended to
        ``generators`` when given: a stochastic scheduler draws its noise from them next)."""
        bench = self.ref if reference else self.bench
        return bench.seed_latents(seeds, self.dtype_of(bench), generators=generators)

    @torch.no_grad()
    def sample(self, parts: list[tuple[Conditioning, float]], x: torch.Tensor, reference: bool = False,
               guidance: float | None = None, generators: list | None = None) -> torch.Tensor:  # fmt: skip
        """Clean latents from initial latents ``x`` with composed guidance
        ``f(∅) + g Σ_i w_i (f(c_i) − f(∅))`` over ``parts = [(c_i, w_i)]`` (one part of weight 1:
        ordinary classifier-free guidance; a weight is a number or a per-row tensor ``[N, 1, ...]``);
        the attacked model's guards act on every step (:meth:`Workbench.sample_composed`)."""
        bench = self.ref if reference else self.bench
        g = self.guidance if guidance is None else guidance
        return bench.sample_composed(parts, x, self.steps, g, self.batch_size, generators)

    def generate(self, cond: Conditioning | list[str], seeds: list[int], x: torch.Tensor | None = None,
                 parts: list[tuple[Conditioning, float]] | None = None, reference: bool = False,
                 guidance: float | None = None) -> np.ndarray:  # fmt: skip
        """Images ``uint8 [N, H, W, 3]`` of the attacked (or reference) model for ``cond`` (prompts or a
        conditioning) from the seeds' noise (or ``x``); ``parts`` replaces ``cond`` by composed guidance."""
        bench = self.ref if reference else self.bench
        if parts is None:
            c = self.cond(cond, reference=reference) if isinstance(cond, list) else cond
            parts = [(c.to(self.dtype_of(bench)), 1.0)]
        generators: list | None = None
        if x is None:
            generators = []
            x = self.initial_latents(seeds, reference, generators)
        return self.decode(self.sample(parts, x, reference, guidance, generators), reference)

    def decode(self, latents: torch.Tensor, reference: bool = False) -> np.ndarray:
        """Images ``uint8 [N, H, W, 3]`` of clean latents, as the model hands them out: the attacked
        model's guards filter them (the safety filter), the reference's are returned as drawn."""
        bench = self.ref if reference else self.bench
        images = bench.decode_images(latents)
        return images if reference else filter_images(self.pipe, images)

    def generate_trials(self, rows: list[int], texts: list[str] | None = None, reference: bool = False) -> np.ndarray:
        """Images of trials ``rows`` from their prompts (or ``texts``, one per row) and seeds."""
        prompts = texts if texts is not None else [self.trials[r].prompt for r in rows]
        return self.generate(prompts, [self.trials[r].seed for r in rows], reference=reference)

    # -- reference material --------------------------------------------------------------------------
    def reference_latents(self) -> torch.Tensor:
        """Clean latents ``x₀`` the reference model draws for every trial (its prompt and seed)."""
        if self._ref_latents is None:
            rows = list(range(len(self.trials)))
            parts = [(self.cond([self.trials[r].prompt for r in rows], reference=True), 1.0)]
            x = self.initial_latents([self.trials[r].seed for r in rows], reference=True)
            self._ref_latents = self.sample(parts, x, reference=True)
        return self._ref_latents

    def reference_point(self, gen: torch.Generator, ref_cond: Conditioning):
        """A fresh ``(x_t, t)`` for every trial, noised from the reference model's image of it, and the
        reference model's prediction there for ``ref_cond`` (the target of P4D and the soft prompt)."""
        b = self.bench.noised(self.reference_latents(), self.bench.sample_t(len(self.trials), gen), gen)
        return b, self.ref.teacher_predict(b.xt, b.t, ref_cond)

    def report_texts(self, tracker, spent: int, texts: list[str]) -> None:
        """Judge every pending trial with ``texts[trial]`` typed as its prompt (one text per trial)."""
        rows = tracker.pending()
        if rows:
            chosen = [texts[r] for r in rows]
            tracker.report(spent, rows, self.generate_trials(rows, chosen), [{"prompt": t} for t in chosen])

    def reference_images(self) -> np.ndarray:
        return self.ref.decode_images(self.reference_latents())

    def variant(self, pipe) -> "Arena":
        """The same arena (trials, judge, reference, sampling) attacking ``pipe`` instead: a copy of the
        attacked model whose weights an attack changed (quantized, fine-tuned)."""
        other = copy.copy(self)
        other.pipe = pipe
        other.bench = Workbench(pipe, self.adapter, [])
        other._uncond = {k: v for k, v in self._uncond.items() if k == 1}
        if self.ref is self.bench:
            other.ref = self.bench
        return other

    def weights_copy(self, components: list[str] | None = None, transform=None):
        """A pipeline sharing the attacked model's other parts, with private copies of ``components``
        (default: the denoiser and the text encoders) that an attack may change; ``transform(pipe)``
        changes the copy's weights (quantization). An erasure that *adds* modules (an adapter) is
        re-installed after the transform, as deployed adapters stay in their own precision: only
        the weights of the model, with the erasure's weight edits, are transformed."""
        names = components or self.adapter.trainable_components(self.pipe)
        attachment = getattr(self.erasure, "attachment", None)
        if attachment is None or self.base is None:
            clone = with_copies(self.pipe, names)
            if transform is not None:
                transform(clone)
            return clone
        import dataclasses

        clone = with_copies(self.base, sorted(set(names) | set(self.adapter.trainable_components(self.base))))
        dataclasses.replace(self.erasure, attachment=None, _applied={}).applied(clone)  # weight edits, LoRA deltas
        if transform is not None:
            transform(clone)
        attachment.install(clone)
        return clone

    # -- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def dtype_of(bench: Workbench) -> torch.dtype:
        """The precision of ``bench``'s denoiser (initial noise and conditionings are cast to it)."""
        return next(getattr(bench.pipe, bench.adapter.denoiser).parameters()).dtype

    def text_encoder(self, reference: bool = False):
        bench = self.ref if reference else self.bench
        return bench.pipe.text_encoder

    def tokenizer(self):
        return self.pipe.tokenizer

    def vocabulary(self) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """The tokens a token attack may choose (``tokens.allowed_tokens``: ids, words) and their
        embedding rows ``[V, d]`` (float32, on the model's device)."""
        from erasekit.attacks.diffusion.tokens import allowed_tokens

        ids, words = allowed_tokens(self.tokenizer(), self.profile.vocabulary, set())
        table = self.text_encoder().get_input_embeddings().weight.detach()[ids.to(self.device)].float()
        return ids, words, table

    @property
    def testbed_world(self) -> bool:
        """Whether the model's world is the testbed's (every word and concept known)."""
        return self.profile.name == "testbed"
