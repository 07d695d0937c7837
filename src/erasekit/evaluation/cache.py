"""A cache of generated images, so that a judged evaluation run again (after a kill, with another
judge, or with more rows) does not draw again what it has drawn; and of finished attacks (their
result and judged images, ``results/KEY.json``), so that a killed ``erasekit attack`` resumes.

An image is keyed by everything that decides it: the model's weights (a fingerprint), the erasure
applied (its checksum, or none), the prompt, the seed, and the sampler (scheduler, steps, guidance,
negative prompt, size). It is stored losslessly as ``<cache>/<key[:2]>/<key>.png`` the moment its
batch is drawn, so an interrupted run resumes where it stopped. The cache directory is an erasekit
collection (a manifest marks it); nothing else is written or removed there.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from erasekit.core import parallel
from erasekit.core.outputs import claim_collection
from erasekit.generation import SamplingConfig, generate


class ImageCache:
    """Images by key in ``root`` (module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = claim_collection(root, "image-cache", what="image cache directory")
        self.hits = self.misses = 0

    @staticmethod
    def model_key(pipe, erasure=None) -> str:
        """The identity of the drawing model: weights fingerprint and the erasure's identity (tensors and
        attachment configuration, :meth:`~erasekit.core.erasure.Erasure.identity`)."""
        from erasekit.core.erasure import model_fingerprint

        return hashlib.sha256(
            f"{model_fingerprint(pipe)}|{erasure.identity() if erasure is not None else 'none'}".encode()
        ).hexdigest()

    @staticmethod
    def key(model_key: str, prompt: str, seed: int, sampling: SamplingConfig, scheduler: str) -> str:
        """The key of one image: model, prompt, seed and sampler."""
        sampler = {"scheduler": scheduler, "steps": sampling.steps, "guidance": sampling.guidance_scale,
                   "negative": sampling.negative_prompt, "height": sampling.height, "width": sampling.width}  # fmt: skip
        return ImageCache.unit_key(model_key, prompt, int(seed), sampler)

    @staticmethod
    def unit_key(*parts) -> str:
        """A key from JSON-able ``parts`` (SHA-256 of their sorted JSON; other objects by ``str``): an
        image's (:meth:`key`) or a kept result's (:meth:`keep`)."""
        return hashlib.sha256(json.dumps(list(parts), sort_keys=True, default=str).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def generate(self, pipe, prompts: list[str], seeds: list[int], sampling: SamplingConfig, erasure=None,
                 progress: bool = True, desc: str = "generate") -> np.ndarray:  # fmt: skip
        """:func:`~erasekit.generation.generate` through the cache: the images already drawn are read,
        the others drawn (in batches, each saved as soon as it is drawn). ``erasure`` is the erasure
        applied to ``pipe`` while drawing (part of the key; the caller applies it)."""
        sampling = sampling.resolved(pipe)
        model = self.model_key(pipe, erasure)
        scheduler = type(getattr(pipe, "scheduler", None)).__name__
        keys = [self.key(model, p, s, sampling, scheduler) for p, s in zip(prompts, seeds)]

        def draw(rows: list[int]) -> np.ndarray:
            return generate(pipe, [prompts[i] for i in rows], [seeds[i] for i in rows], sampling, False)

        return self.through(keys, draw, sampling.batch_size, desc, progress)

    def through(self, keys: list[str], draw, batch_size: int = 32, desc: str = "generate", progress: bool = False) -> np.ndarray:
        """The images of ``keys``: batches of ``batch_size`` rows formed over all of them (as an uncached
        run forms them), each read where cached, its missing rows drawn with ``draw(rows)`` and saved
        as soon as they are drawn. Under torchrun / accelerate batch ``k`` is rank ``k mod N``'s
        (:mod:`erasekit.core.parallel`): every rank saves what it draws, so a killed run resumes."""

        def batch(rows: list[int]) -> tuple[list[np.ndarray], int]:
            images: list[np.ndarray | None] = [self._read(keys[i]) for i in rows]
            missing = [j for j, img in enumerate(images) if img is None]
            if missing:
                for j, img in zip(missing, draw([rows[j] for j in missing])):
                    self._write(keys[rows[j]], img)
                    images[j] = img
            return [img for img in images if img is not None], len(missing)

        done = parallel.current().map_batches(len(keys), batch_size, batch, desc=desc, progress=progress)
        drawn = sum(n for _, n in done)
        self.hits += len(keys) - drawn
        self.misses += drawn
        images = [img for imgs, _ in done for img in imgs]
        return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)

    def result(self, key: str) -> tuple[dict, np.ndarray] | None:
        """A result kept with :meth:`keep` (its JSON and its images), or ``None`` when absent or damaged."""
        from erasekit.core.io import read_json

        path = self.root / "results" / f"{key}.json"
        if not path.is_file():
            return None
        try:
            data = read_json(path)
            images = [self._read(f"{key}-{i}") for i in range(int(data["images"]))]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if any(img is None for img in images):
            return None
        return data["result"], np.stack([img for img in images if img is not None])

    def keep(self, key: str, result: dict, images: np.ndarray) -> None:
        """Keep a finished unit's result (JSON) and its images under ``key``: images first, so a result
        found is whole."""
        from erasekit.core.io import write_json

        for i, img in enumerate(images):
            self._write(f"{key}-{i}", img)
        (self.root / "results").mkdir(parents=True, exist_ok=True)
        write_json(self.root / "results" / f"{key}.json", {"images": len(images), "result": result})

    def stats(self) -> dict:
        return {"hits": self.hits, "drawn": self.misses}

    def _read(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except OSError:  # a damaged entry is drawn again
            return None

    def _write(self, key: str, image: np.ndarray) -> None:
        from erasekit.core.io import atomic_path

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
