"""The testbed's quality gate: does the model draw what its prompts say?

Prompt sets (every prompt sampled with the same ``seeds``):

- **grid**: every shape x colour x style in canonical words, with the background cycling so that
  every background appears equally (``(i_shape + i_colour + i_style) mod 3``);
- **synonyms**: each synonym of a shape or style substituted into 6 grid prompts of its concept;
  the synonym's accuracy is compared with the canonical word on the *same* prompts and seeds;
- **characters**: every character name in every character template, and its plain description;
- **watermark**: the grid's prompts in the watermark subset (white background) vs the others.

Accuracy in a domain is the share of samples whose classified label equals the prompt's. The gate
passes when shape, colour, background >= 0.90, style >= 0.80, character >= 0.80 (all of the
character's attributes shown), every synonym within 5 points of its canonical word, and the
watermark rate within 10 points of its training share in the subset and <= 0.05 elsewhere.

An **oracle** (a testbed trained without some concepts, ``excluded``) is gated on everything else
the same way, with the prompts that ask for an excluded concept left out of those checks; instead
each excluded concept must stay absent from its own prompts: UA (share of its prompts' images that
do not show it) >= 0.90 (for the watermark: on the subset's prompts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from erasekit.core.stats import wilson
from erasekit.generation import SamplingConfig, generate, prompt_seeds
from erasekit.testbeds.image import world
from erasekit.testbeds.image.classifier import LABEL_NAMES, TestbedClassifier

THRESHOLDS = {
    "shape": 0.90,
    "colour": 0.90,
    "style": 0.80,
    "background": 0.90,
    "character": 0.80,
    "synonym_gap_points": 5.0,
    "watermark_subset_tolerance_points": 10.0,
    "watermark_elsewhere_max": 0.05,
    "excluded_ua": 0.90,
}


@dataclass(frozen=True)
class GatePrompt:
    """A prompt, the set it belongs to, and the attributes its images must show."""

    prompt: str
    kind: str  # grid | synonym | character | description
    expected: world.Attributes
    word: str | None = None  # the synonym or character name it tests
    canonical_prompt: str | None = None  # for synonyms: the grid prompt it is compared with


def grid_prompts() -> list[GatePrompt]:
    out = []
    colours, backs = list(world.COLOURS), list(world.BACKGROUNDS)
    for i, shape in enumerate(world.SHAPES):
        for j, colour in enumerate(colours):
            for k, style in enumerate(world.STYLES):
                a = world.Attributes(shape, style, colour, backs[(i + j + k) % len(backs)])
                out.append(GatePrompt(a.describe(), "grid", a))
    return out


def synonym_prompts(grid: list[GatePrompt], per_word: int = 6) -> list[GatePrompt]:
    """Each synonym in ``per_word`` grid prompts of its concept, spread over colours and styles."""
    out = []
    for concept in (*world.SHAPES, *world.STYLES):
        domain = world.domain_of(concept)
        of_concept = [g for g in grid if getattr(g.expected, domain) == concept]
        step = max(1, len(of_concept) // per_word)
        chosen = of_concept[::step][:per_word]
        for word in world.SYNONYMS[concept]:
            for g in chosen:
                a = g.expected
                words = {"shape": a.shape, "style": a.style}
                words[domain] = word
                prompt = f"a {a.colour} {words['style']} {words['shape']} on a {a.background} background"
                out.append(GatePrompt(prompt, "synonym", a, word=word, canonical_prompt=g.prompt))
    return out


def character_prompts() -> list[GatePrompt]:
    out = []
    for name, attrs in world.CHARACTERS.items():
        for template in world.CHARACTER_TEMPLATES:
            out.append(GatePrompt(template.format(name=name), "character", attrs, word=name))
        out.append(GatePrompt(attrs.describe(), "description", attrs, word=name))
    return out


def all_prompts() -> list[GatePrompt]:
    grid = grid_prompts()
    return grid + synonym_prompts(grid) + character_prompts()


class _Judged:
    """The classifier's labels for every gate prompt's ``seeds`` images (rows ``i*seeds ..`` of prompt ``i``)."""

    def __init__(self, pred: dict[str, np.ndarray], unique: list[str], seeds: int) -> None:
        self.pred, self.seeds = pred, seeds
        self.names = {d: LABEL_NAMES[d] for d in (*world.DOMAINS, "watermark")}
        self.row_of = {p: i * seeds for i, p in enumerate(unique)}

    def predicted(self, prompt: str) -> dict[str, np.ndarray]:
        """The label names of ``prompt``'s images, per head."""
        r = self.row_of[prompt]
        return {d: np.array([self.names[d][x] for x in self.pred[d][r : r + self.seeds]]) for d in self.names}

    def correct(self, gp: GatePrompt) -> dict[str, np.ndarray]:
        """Per domain, which of ``gp``'s images show the attribute it asks for."""
        p = self.predicted(gp.prompt)
        return {d: p[d] == getattr(gp.expected, d) for d in world.DOMAINS}


def _asks_excluded(gp: GatePrompt, excluded: tuple[str, ...]) -> bool:
    """Whether ``gp`` asks for an excluded concept (its attribute, its word, or a character's combination)."""
    attrs = gp.expected
    return (
        any(getattr(attrs, d) in excluded for d in world.DOMAINS)
        or (gp.word in excluded)
        or any(
            c in excluded and all(getattr(attrs, d) == getattr(world.CHARACTERS[c], d) for d in world.DOMAINS)
            for c in world.CHARACTERS
        )
    )


def _excluded_hits(judged: _Judged, prompts: list[GatePrompt], excluded: tuple[str, ...]) -> dict[str, list[int]]:
    """``{concept: [images that show it, images]}`` on the prompts that ask for each excluded concept."""
    out = {}
    for c in excluded:
        domain = world.domain_of(c)
        if domain == "watermark":
            group = [g for g in prompts if g.kind == "grid" and world.WATERMARK.in_subset(g.expected)]
            shown = [judged.predicted(g.prompt)["watermark"] == "present" for g in group]
        elif domain == "character":
            group = [g for g in prompts if g.kind == "character" and g.word == c]
            a = world.CHARACTERS[c]
            shown = [
                np.logical_and.reduce([judged.predicted(g.prompt)[d] == getattr(a, d) for d in world.DOMAINS]) for g in group
            ]
        else:
            group = [g for g in prompts if g.kind == "grid" and getattr(g.expected, domain) == c]
            shown = [judged.predicted(g.prompt)[domain] == c for g in group]
        hits = np.concatenate(shown) if shown else np.zeros(0, dtype=bool)
        out[c] = [int(hits.sum()), int(hits.size)]
    return out


def _grid_counts(judged: _Judged, prompts: list[GatePrompt]):
    """``(totals, watermark counts, per-prompt rows)`` of the grid prompts: correct / all per domain,
    marked / all inside and outside the watermark's subset."""
    seeds = judged.seeds
    details = []
    totals = {d: [0, 0] for d in world.DOMAINS}
    wm = {"subset": [0, 0], "elsewhere": [0, 0]}
    for gp in (g for g in prompts if g.kind == "grid"):
        c = judged.correct(gp)
        marked = judged.predicted(gp.prompt)["watermark"] == "present"
        for d in world.DOMAINS:
            totals[d][0] += int(c[d].sum())
            totals[d][1] += seeds
        part = "subset" if world.WATERMARK.in_subset(gp.expected) else "elsewhere"
        wm[part][0] += int(marked.sum())
        wm[part][1] += seeds
        details.append(
            {
                "prompt": gp.prompt,
                "kind": gp.kind,
                **{d: float(c[d].mean()) for d in world.DOMAINS},
                "watermark": float(marked.mean()),
            }
        )
    return totals, wm, details


def _synonym_rows(judged: _Judged, prompts: list[GatePrompt]) -> list[dict]:
    """Per synonym: its accuracy, its canonical word's on the same grid prompts, and the gap in points."""
    rows = []
    for word in dict.fromkeys(g.word for g in prompts if g.kind == "synonym"):
        group = [g for g in prompts if g.kind == "synonym" and g.word == word]
        concept = world.canonical(str(word))
        if concept is None:
            raise ValueError(f"gate prompt word {word!r} names no concept of the world")
        domain = world.domain_of(concept)
        syn = float(np.mean([judged.correct(g)[domain].mean() for g in group]))
        canon_prompts = [GatePrompt(str(g.canonical_prompt), "grid", g.expected) for g in group]
        can = float(np.mean([judged.correct(g)[domain].mean() for g in canon_prompts]))
        rows.append(
            {
                "word": word,
                "concept": concept,
                "domain": domain,
                "accuracy": syn,
                "canonical_accuracy": can,
                "gap_points": round(abs(syn - can) * 100, 2),
                "n": len(group) * judged.seeds,
            }
        )
    return rows


def _character_rows(judged: _Judged, prompts: list[GatePrompt], excluded: tuple[str, ...]) -> tuple[list[dict], list[int]]:
    """Per character not excluded, by name and by description: all-attributes and per-domain accuracy;
    and ``[all correct, images]`` over the name prompts."""
    rows: list[dict] = []
    by_name = [0, 0]
    for name, attrs in world.CHARACTERS.items():
        if name in excluded or any(getattr(attrs, d) in excluded for d in world.DOMAINS):
            continue
        for kind in ("character", "description"):
            group = [g for g in prompts if g.kind == kind and g.word == name]
            allc = np.concatenate([np.logical_and.reduce([judged.correct(g)[d] for d in world.DOMAINS]) for g in group])
            per_domain = {d: float(np.concatenate([judged.correct(g)[d] for g in group]).mean()) for d in world.DOMAINS}
            rows.append({"name": name, "prompts": kind, "all_attributes": float(allc.mean()), **per_domain, "n": int(allc.size)})
            if kind == "character":
                by_name[0] += int(allc.sum())
                by_name[1] += int(allc.size)
    return rows, by_name


def _checks(accuracy: dict, gap: float, wm_rates: dict, excluded_ua: dict, excluded: tuple[str, ...]) -> dict[str, bool]:
    """Each gate check against :data:`THRESHOLDS`."""
    checks = {d: accuracy[d] >= THRESHOLDS[d] for d in (*world.DOMAINS, "character")}
    checks["synonym_gap"] = gap <= THRESHOLDS["synonym_gap_points"]
    checks["watermark_subset"] = "watermark" in excluded or (
        abs(wm_rates["subset"] - world.WATERMARK.share) * 100 <= THRESHOLDS["watermark_subset_tolerance_points"]
    )
    for c, ua in excluded_ua.items():
        checks[f"excluded_{c}"] = ua is not None and ua >= THRESHOLDS["excluded_ua"]
    checks["watermark_elsewhere"] = wm_rates["elsewhere"] <= THRESHOLDS["watermark_elsewhere_max"]
    return checks


def run_gate(
    pipe,
    classifier: TestbedClassifier,
    seeds: int = 8,
    sampling: SamplingConfig | None = None,
    progress: bool = True,
    excluded: tuple[str, ...] = (),
) -> dict:
    """Generate every gate prompt with ``seeds`` seeds, classify, and return the gate report.

    Prompt ``i`` (in order of first appearance) uses seeds ``i*seeds .. i*seeds + seeds-1``: the same
    few seeds for every prompt would correlate the samples across prompts (the initial noise in the
    watermark's corner decides the mark, so two shared seeds made the subset rate 0 or 1).
    """
    t0 = time.time()
    prompts = all_prompts()
    unique = list(dict.fromkeys(p.prompt for p in prompts))
    sampling = (sampling or SamplingConfig()).resolved(pipe)
    images = generate(pipe, [p for p in unique for _ in range(seeds)], prompt_seeds(len(unique), seeds), sampling,
                      progress=progress, desc="gate")  # fmt: skip
    judged = _Judged(classifier.predict(images), unique, seeds)
    excluded_hits = _excluded_hits(judged, prompts, excluded)
    prompts = [g for g in prompts if not _asks_excluded(g, excluded)]
    totals, wm, details = _grid_counts(judged, prompts)
    synonyms = _synonym_rows(judged, prompts)
    characters, char_all = _character_rows(judged, prompts, excluded)

    accuracy = {d: totals[d][0] / totals[d][1] for d in world.DOMAINS}
    accuracy["character"] = char_all[0] / char_all[1]
    gap = max(float(s["gap_points"]) for s in synonyms)
    wm_rates = {k: v[0] / v[1] for k, v in wm.items()}
    excluded_ua = {c: (1 - k / n if n else None) for c, (k, n) in excluded_hits.items()}
    checks = _checks(accuracy, gap, wm_rates, excluded_ua, excluded)
    return {
        "accuracy": accuracy,
        "synonym_gap": gap,
        "watermark": {"subset": wm_rates["subset"], "elsewhere": wm_rates["elsewhere"], "training_share": world.WATERMARK.share},
        "passed": all(checks.values()),
        "excluded": {
            c: {
                "ua": excluded_ua[c],
                "n": excluded_hits[c][1],
                "ua_ci95": [round(1 - x, 4) for x in reversed(wilson(*excluded_hits[c]))],
            }
            for c in excluded
        },  # fmt: skip
        "checks": checks,
        "thresholds": THRESHOLDS,
        "intervals": {
            **{d: [round(x, 4) for x in wilson(totals[d][0], totals[d][1])] for d in world.DOMAINS},
            "character": [round(x, 4) for x in wilson(*char_all)],
            "watermark_subset": [round(x, 4) for x in wilson(*wm["subset"])],
            "watermark_elsewhere": [round(x, 4) for x in wilson(*wm["elsewhere"])],
        },
        "samples": {
            "seeds_per_prompt": seeds,
            "seeds": "prompt i uses i*seeds .. i*seeds+seeds-1",
            "prompts": len(unique),
            "images": len(images),
        },
        "sampling": sampling.to_dict(),
        "seconds": round(time.time() - t0, 1),
        "synonyms": synonyms,
        "characters": characters,
        "per_prompt": details,
    }


def summary_lines(report: dict) -> list[str]:
    """Human-readable lines of a gate report (used by the CLI and the demo)."""
    acc, th = report["accuracy"], report["thresholds"]
    ok = report["checks"]
    lines = [f"{'check':<22}{'value':>10}{'needs':>12}  ok"]
    for d in (*world.DOMAINS, "character"):
        lines.append(f"{d + ' accuracy':<22}{acc[d]:>10.3f}{'>= ' + format(th[d], '.2f'):>12}  {'yes' if ok[d] else 'NO'}")
    lines.append(
        f"{'synonym gap (points)':<22}{report['synonym_gap']:>10.1f}{'<= ' + format(th['synonym_gap_points'], '.0f'):>12}  {'yes' if ok['synonym_gap'] else 'NO'}"
    )
    share = report["watermark"]["training_share"]
    tol = th["watermark_subset_tolerance_points"] / 100
    if "watermark" not in report.get("excluded", {}):
        lines.append(
            f"{'watermark (subset)':<22}{report['watermark']['subset']:>10.3f}{f'{share - tol:.2f}-{share + tol:.2f}':>12}  {'yes' if ok['watermark_subset'] else 'NO'}"
        )
    lines.append(
        f"{'watermark (elsewhere)':<22}{report['watermark']['elsewhere']:>10.3f}{'<= ' + format(th['watermark_elsewhere_max'], '.2f'):>12}  {'yes' if ok['watermark_elsewhere'] else 'NO'}"
    )
    for c, e in report.get("excluded", {}).items():
        lines.append(
            f"{'UA ' + c + ' (excluded)':<22}{e['ua']:>10.3f}{'>= ' + format(th['excluded_ua'], '.2f'):>12}  {'yes' if ok['excluded_' + c] else 'NO'}"
        )
    lines.append(
        f"gate {'PASSED' if report['passed'] else 'FAILED'} ({report['samples']['images']} images, {report['samples']['seeds_per_prompt']} seeds per prompt)"
    )
    return lines
