"""Evaluate an erasure (or the base model) on the testbed with the testbed judge.

One run generates every prompt of every target's prompt set with fixed seeds, once with the base
model and once with the erasure applied (then removed: the pipeline ends as it started), classifies
all images, and reports, per target and macro-averaged over targets, the metrics of metrics.py for
the erased model and, under ``base``, for the base model.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import numpy as np
import torch

from erasekit.core.stats import rate
from erasekit.evaluation.metrics import frechet_distance, labels_of, shows
from erasekit.evaluation.prompts import DOMAIN_VALUES, EvalPrompt, prompt_set, resolve_concept
from erasekit.generation import SamplingConfig, generate, prompt_seeds
from erasekit.testbeds.image import world
from erasekit.testbeds.image.classifier import to_model_input


@dataclass
class EvalPlan:
    """The prompt sets of an evaluation and where each prompt's images sit in the generated batch."""

    plans: dict[str, list[EvalPrompt]]  # target -> its prompt set
    prompts: list[str]  # every distinct prompt, in order of first appearance
    seeds: int  # images per prompt

    @property
    def rows(self) -> dict[str, np.ndarray]:
        return {p: np.arange(i * self.seeds, (i + 1) * self.seeds) for i, p in enumerate(self.prompts)}

    @property
    def flat_prompts(self) -> list[str]:
        return [p for p in self.prompts for _ in range(self.seeds)]

    @property
    def flat_seeds(self) -> list[int]:
        return prompt_seeds(len(self.prompts), self.seeds)

    def generate(self, pipe, sampling: SamplingConfig | None = None, progress: bool = False, desc: str = "generate",
                 cache=None, erasure=None) -> np.ndarray:  # fmt: skip
        """Every prompt's images (prompt-major); through the image ``cache`` when given (``erasure``:
        the one applied to ``pipe``, part of its keys)."""
        if cache is not None:
            return cache.generate(pipe, self.flat_prompts, self.flat_seeds, (sampling or SamplingConfig()), erasure,
                                  progress=progress, desc=desc)  # fmt: skip
        return generate(pipe, self.flat_prompts, self.flat_seeds, sampling, progress=progress, desc=desc)


def evaluation_plan(targets: list[str], n_contexts: int, seeds: int) -> EvalPlan:
    """Every target's prompt set (:func:`prompt_set`), the distinct prompts, ``seeds`` images each."""
    plans = {t: prompt_set(t, n_contexts) for t in targets}
    return EvalPlan(plans, list(dict.fromkeys(p.prompt for plan in plans.values() for p in plan)), seeds)


def _images_and_preds(pipe, judge, plan: EvalPlan, sampling: SamplingConfig, progress: bool, desc: str, cache=None, erasure=None):
    images = plan.generate(pipe, sampling, progress=progress, desc=desc, cache=cache, erasure=erasure)
    pred = judge.predict(images)
    with torch.no_grad():
        feats = torch.cat([judge.embed(to_model_input(images[i : i + 512])) for i in range(0, len(images), 512)])
    return images, pred, feats


def _per_image(prompts: list[EvalPrompt], rows: dict[str, np.ndarray], pred: dict, test) -> np.ndarray:
    """``test(labels, prompt) -> bool [k]`` on every prompt's images, concatenated (empty for no prompt)."""
    if not prompts:
        return np.zeros(0, dtype=bool)
    return np.concatenate([test(labels_of(pred, rows[p.prompt]), p) for p in prompts])


def target_metrics(target: str, plan: list[EvalPrompt], rows: dict[str, np.ndarray], pred: dict) -> dict:
    """UA / IRA / CRA of one target from predictions ``pred`` (``rows[prompt]``: its image rows)."""
    concept, domain = resolve_concept(target)

    def pick(group: str, neighbour: bool | None = None) -> list[EvalPrompt]:
        return [p for p in plan if p.group == group and (neighbour is None or p.neighbour == neighbour)]

    def shown(prompts: list[EvalPrompt], own: bool) -> np.ndarray:
        """Per image: shows the target (own=False) or the prompt's own concept (own=True)."""
        return _per_image(prompts, rows, pred, lambda lab, p: shows(lab, p.concept if own else concept, domain))

    carrier = world.WATERMARK.domain if domain == "watermark" else None
    doms = [d for d in DOMAIN_VALUES if d not in (domain, carrier)]

    def other_domains(prompts: list[EvalPrompt]) -> np.ndarray:
        """Per image and domain other than the target's (and its carrier's): drawn as the prompt asks."""
        return _per_image(prompts, rows, pred, lambda lab, p: np.concatenate([lab[d] == getattr(p.expected, d) for d in doms]))

    if domain == "watermark":
        return _watermark_metrics(concept, pick("target"), pick("other"), rows, pred, other_domains)
    named = pick("target") + pick("synonym")
    result = {
        "concept": concept,
        "domain": domain,
        "ua": rate(~shown(named, own=False)),
        "ua_canonical": rate(~shown(pick("target"), own=False)),
        "ua_synonym": rate(~shown(pick("synonym"), own=False)),
        "ira": rate(shown(pick("other"), own=True)),
        "ira_neighbours": rate(shown(pick("other", neighbour=True), own=True)),
        "cra": rate(other_domains(pick("other"))),
        "cra_on_target": rate(other_domains(named)),
    }
    if domain == "character":
        result["ua_description"] = rate(~shown(pick("description"), own=False))
    return result


def _watermark_metrics(
    concept: str, subset: list[EvalPrompt], outside: list[EvalPrompt], rows: dict, pred: dict, other_domains
) -> dict:
    """The watermark's metrics: UA on its subset's prompts; retention is that of its carrier domain
    (IRA: every prompt's background still drawn; neighbours: the subset's own background), CRA the
    remaining domains; ``watermark_elsewhere``: marks drawn outside the subset (should stay ~0)."""
    carrier = world.WATERMARK.domain

    def per_image(prompts: list[EvalPrompt], test) -> np.ndarray:
        return _per_image(prompts, rows, pred, test)

    def marked(lab: dict, p: EvalPrompt) -> np.ndarray:
        return lab["watermark"] == "present"

    def kept(lab: dict, p: EvalPrompt) -> np.ndarray:
        return lab[carrier] == getattr(p.expected, carrier)

    return {
        "concept": concept,
        "domain": "watermark",
        "ua": rate(~per_image(subset, marked)),
        "ua_canonical": rate(~per_image(subset, marked)),
        "ua_synonym": rate(np.zeros(0, dtype=bool)),
        "ira": rate(per_image(subset + outside, kept)),
        "ira_neighbours": rate(per_image(subset, kept)),
        "cra": rate(other_domains(outside)),
        "cra_on_target": rate(other_domains(subset)),
        "watermark_elsewhere": rate(per_image(outside, marked)),
    }


def macro(per_target: list[dict], keys: tuple[str, ...] = ("ua", "ira", "cra")) -> dict[str, float | None]:
    """Mean over targets of each rate in ``keys`` (targets without that rate left out; None if none has it)."""

    def mean(key: str) -> float | None:
        vals = [t[key]["rate"] for t in per_target if t[key]["rate"] is not None]
        return float(np.mean(vals)) if vals else None

    return {k: mean(k) for k in keys}


def evaluate_on_testbed(
    pipe,
    judge,
    targets: list[str],
    erasure=None,
    seeds: int = 4,
    n_contexts: int = 12,
    sampling: SamplingConfig | None = None,
    progress: bool = True,
    base_cache: dict | None = None,
    cache=None,
) -> dict:
    """The evaluation report (see module docstring); ``base_cache`` reuses base-model images across
    calls; ``cache``: an :class:`~erasekit.evaluation.cache.ImageCache` that keeps every drawn image (a
    rerun, or a killed run resumed, draws only what is missing)."""
    t0 = time.time()
    sampling = (sampling or SamplingConfig()).resolved(pipe)
    plan = evaluation_plan(targets, n_contexts, seeds)
    plans, prompts, rows = plan.plans, plan.prompts, plan.rows

    key = (tuple(prompts), seeds, sampling.steps, sampling.guidance_scale)
    if base_cache is not None and key in base_cache:
        base_images, base_pred, base_feats = base_cache[key]
    else:
        base_images, base_pred, base_feats = _images_and_preds(pipe, judge, plan, sampling, progress, "base model", cache)
        if base_cache is not None:
            base_cache[key] = (base_images, base_pred, base_feats)
    report: dict = {}
    base_targets = [target_metrics(t, plans[t], rows, base_pred) for t in targets]
    report["base"] = {**macro(base_targets), "targets": base_targets}

    if erasure is not None:
        with erasure.applied(pipe):
            images, pred, feats = _images_and_preds(pipe, judge, plan, sampling, progress, "erased model", cache, erasure)
        per_target = [target_metrics(t, plans[t], rows, pred) for t in targets]
        other = np.concatenate([rows[p.prompt] for plan in plans.values() for p in plan if p.group == "other"])
        other = np.unique(other)
        changed_labels = np.zeros(len(other), dtype=bool)
        for d in (*DOMAIN_VALUES, "watermark"):
            changed_labels |= pred[d][other] != base_pred[d][other]
        fidelity = {
            "pixel_change": float(np.abs(images[other].astype(np.float32) - base_images[other].astype(np.float32)).mean() / 255),
            "labels_unchanged": rate(~changed_labels),
            "frechet_distance": frechet_distance(base_feats[other], feats[other]) if len(other) > 2 else None,
            "frechet_distance_target_prompts": None,
            "images": int(len(other)),
        }
        named = np.unique(
            np.concatenate([rows[p.prompt] for plan in plans.values() for p in plan if p.group in ("target", "synonym")])
        )
        if len(named) > 2:
            fidelity["frechet_distance_target_prompts"] = frechet_distance(base_feats[named], feats[named])
        report.update(macro(per_target))
        report["targets"] = per_target
        report["fidelity"] = fidelity
        report["cost"] = {
            "erase_seconds": erasure.timings.get("seconds"),
            "delta_bytes": erasure.num_bytes(),
            "changed_tensors": len(erasure.weights),
            "method": erasure.method,
            "params": erasure.params,
        }
    else:
        report.update({k: v for k, v in report["base"].items() if k != "targets"})
        report["targets"] = base_targets
    report["samples"] = {
        "seeds_per_prompt": seeds,
        "prompts": len(prompts),
        "images_per_model": len(prompts) * seeds,
        "contexts": n_contexts,
    }
    if cache is not None:
        report["image_cache"] = cache.stats()
    report["sampling"] = sampling.to_dict()
    report["eval_seconds"] = round(time.time() - t0, 1)
    report["peak_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return report
