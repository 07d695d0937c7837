"""Evaluation of an erasure on any pipeline, by a registered judge, on prompt sets the user brings.

For the **target** prompts (rows of a prompt set: I2P, a style or object CSV...) each row is drawn
``samples`` times, before and after the erasure, with the same seeds (the row's ``evaluation_seed``
+ 0..samples−1, or 0..samples−1 when the row has none) and the row's guidance when it gives one::

    shown        = #{after-images the judge says show the concept} / #images      (95 % Wilson)
    UA           = 1 − shown            (the erasure rate; the base model's is reported beside it)

For the **retain** prompts (e.g. COCO captions), images of the same prompt and seed before and
after give the fidelity of what should not change:

    verdict kept = #{images whose judge verdict on the concept is the base's} / #images
    pixel change = mean |after − before| / 255
    CLIP score   = mean max(100 · cos(image, its prompt), 0), before and after   (with a CLIPScore judge)
    FD, KID      = Fréchet and kernel (KID) distances between CLIP image features before and after
                   (with a CLIPScore judge)

Every report names the judge as it describes itself (package, version, classes, threshold, weights)
and the prompt file, filter and row count, so its numbers can be compared with others only when those
match.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from erasekit.core.errors import ConfigError
from erasekit.core.stats import rate
from erasekit.evaluation.prompt_sets import PromptRow
from erasekit.generation import SamplingConfig, generate


def check_known(judge, concept: str) -> None:
    """A one-line error when ``judge`` cannot tell ``concept`` (before any image is made)."""
    if not judge.knows(concept):
        name = _described(judge).get("name", "")
        raise ConfigError(f"the {name} judge cannot tell {concept!r}; choose a judge for it (see 'erasekit judges')")


def row_draws(rows: Sequence[PromptRow], samples: int) -> list[tuple[int, int]]:
    """``(row index, seed)`` of every image: the row's seed + 0..samples−1 (0..samples−1 without one)."""
    if samples < 1:
        raise ConfigError(f"samples must be at least 1, got {samples}")
    return [(i, (row.seed or 0) + k) for i, row in enumerate(rows) for k in range(samples)]


def generate_rows(pipe, rows: Sequence[PromptRow], samples: int, sampling: SamplingConfig | None = None,
                  progress: bool = True, desc: str = "generate", cache=None, erasure=None) -> np.ndarray:  # fmt: skip
    """One image per :func:`row_draws` entry, in that order; rows that give a guidance or size are
    drawn with it (grouped so each group is one batched call). With ``cache`` (an
    :class:`~erasekit.evaluation.cache.ImageCache`) images drawn before are read back; ``erasure``
    names the erasure applied while drawing (part of the cache key)."""
    sampling = sampling or SamplingConfig()
    draws = row_draws(rows, samples)
    groups: dict[tuple, list[int]] = {}
    for j, (i, _) in enumerate(draws):
        r = rows[i]
        groups.setdefault((r.guidance, r.height, r.width), []).append(j)
    out: list[np.ndarray | None] = [None] * len(draws)
    for (guidance, height, width), members in groups.items():
        cfg = SamplingConfig(steps=sampling.steps, batch_size=sampling.batch_size, negative_prompt=sampling.negative_prompt,
                             guidance_scale=sampling.guidance_scale if guidance is None else guidance,
                             height=height, width=width)  # fmt: skip
        prompts, seeds = [rows[draws[j][0]].prompt for j in members], [draws[j][1] for j in members]
        if cache is not None:
            images = cache.generate(pipe, prompts, seeds, cfg, erasure, progress=progress, desc=desc)
        else:
            images = generate(pipe, prompts, seeds, cfg, progress=progress, desc=desc)
        for j, img in zip(members, images):
            out[j] = img
    return np.stack([img for img in out if img is not None]) if draws else np.zeros((0, 0, 0, 3), np.uint8)


def _scores(judge, images: np.ndarray, concept: str) -> list[float] | None:
    return [round(float(s), 4) for s in judge.scores(images, concept)] if hasattr(judge, "scores") else None


def evaluate_with_judge(pipe, judge, concept: str, target: Sequence[PromptRow], retain: Sequence[PromptRow] | None = None,
                        erasure=None, samples: int = 1, sampling: SamplingConfig | None = None, fidelity=None,
                        progress: bool = True, grid=None, cache=None) -> dict:  # fmt: skip
    """The report of the module docstring (``erasure=None``: the base model only). ``fidelity``: a
    CLIPScore judge for the retain images' CLIP score and FD (optional); ``grid``: where to save the
    target images before and after side by side, captioned with prompt, seed and verdict (its file
    name goes into the report as ``images``); ``cache``: an image cache that keeps every drawn image
    (a rerun, or a killed run resumed, draws only what is missing)."""
    check_known(judge, concept)
    if not target:
        raise ConfigError("nothing to evaluate: the target prompt set is empty")
    t0 = time.perf_counter()
    base = generate_rows(pipe, target, samples, sampling, progress, "target prompts (base)", cache)
    report: dict = {"kind": "judged", "concept": concept, "judge": _described(judge), "samples": samples,
                    "target_prompts": len(target), "base": _verdicts(judge, base, concept)}  # fmt: skip
    after = None
    if erasure is not None:
        with erasure.applied(pipe):
            after = generate_rows(pipe, target, samples, sampling, progress, "target prompts (erased)", cache, erasure)
        report.update(_verdicts(judge, after, concept))
    draws = row_draws(target, samples)
    report["per_image"] = [
        {"prompt": target[i].prompt, "seed": s, "case": target[i].case, "base_shown": bool(b),
         **({} if after is None else {"shown": bool(a)})}
        for (i, s), b, a in zip(draws, judge.shows(base, concept), judge.shows(after, concept) if after is not None else [None] * len(draws))
    ]  # fmt: skip
    if grid is not None:
        save_judged_grid(report["per_image"], base, after, grid)
        report["images"] = Path(grid).name
    if retain and erasure is not None:
        report["retain"] = _retention(pipe, judge, concept, retain, erasure, samples, sampling, fidelity, progress, cache)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    if cache is not None:
        report["image_cache"] = cache.stats()
    return report


def save_judged_grid(per_image: list[dict], base: np.ndarray, after: np.ndarray | None, path) -> Path:
    """Before (and after) images of every target draw, side by side, captioned with the prompt, the
    seed and the judge's verdict."""
    from erasekit.core.outputs import write_image
    from erasekit.generation import make_grid

    columns = [base] if after is None else [base, after]
    images = np.stack([col[i] for i in range(len(base)) for col in columns])
    captions = []
    for rec in per_image:
        captions.append(f"{rec['prompt'][:14]}\nseed {rec['seed']} {'shown' if rec['base_shown'] else '-'}")
        if after is not None:
            captions.append(f"erased\n{'shown' if rec['shown'] else '-'}")
    return write_image(make_grid(images, captions, cols=2 * len(columns)), path, "image")


def _described(judge) -> dict:
    return judge.describe() if hasattr(judge, "describe") else {"name": type(judge).__name__}


def _verdicts(judge, images: np.ndarray, concept: str) -> dict:
    shown = np.asarray(judge.shows(images, concept), dtype=bool)
    out = {"shown": rate(shown), "ua": rate(~shown)["rate"], "ua_rate": rate(~shown)}
    scores = _scores(judge, images, concept)
    if scores is not None:
        out["mean_score"] = round(float(np.mean(scores)), 4) if scores else None
    return out


def _retention(pipe, judge, concept, retain, erasure, samples, sampling, fidelity, progress, cache=None) -> dict:
    from erasekit.evaluation.metrics import frechet_distance, kernel_distance

    before = generate_rows(pipe, retain, samples, sampling, progress, "retain prompts (base)", cache)
    with erasure.applied(pipe):
        after = generate_rows(pipe, retain, samples, sampling, progress, "retain prompts (erased)", cache, erasure)
    kept = np.asarray(judge.shows(before, concept), dtype=bool) == np.asarray(judge.shows(after, concept), dtype=bool)
    out: dict = {"prompts": len(retain), "verdict_kept": rate(kept),
                 "pixel_change": round(float(np.abs(after.astype(np.float32) - before.astype(np.float32)).mean() / 255), 5)}  # fmt: skip
    if fidelity is not None:
        texts = [retain[i].prompt for i, _ in row_draws(retain, samples)]
        out["clip_score"] = {"base": round(float(fidelity.score(before, texts).mean()), 4),
                             "erased": round(float(fidelity.score(after, texts).mean()), 4)}  # fmt: skip
        fa, fb = fidelity.image_features(before), fidelity.image_features(after)
        out["fd_clip"] = round(frechet_distance(fa, fb), 6) if len(texts) > 1 else None
        out["kid_clip"] = round(kernel_distance(fa, fb), 6) if len(texts) > 1 else None
        out["fidelity_judge"] = _described(fidelity)
    return out
