"""Does the testbed rank erasure methods as real Stable Diffusion does? Agreement with published tables.

Usage:
    python benchmarks/validity.py [--methods esd,uce,...] [--seeds 3] [--out benchmarks/results/validity.json]
    python benchmarks/validity.py --render      # docs/testbed.md's *Validity* section from the JSON alone

The protocol is UnlearnCanvas's (Zhang et al., NeurIPS 2024 D&B) on the testbed world: every style (4) and
every shape (8) is erased in its own run, from the shipped testbed, and each erased model draws the full
grid of prompts ``an image of a {shape} in {style} style`` (UnlearnCanvas: ``An {object} image in {style}
style.``), ``--seeds`` images per prompt, judged by the testbed classifier. For a run that erased concept
``c`` of domain ``D`` (style or shape; the other domain is ``D'``):

- UA  = share of the images of prompts naming ``c`` whose ``D`` is judged other than ``c``;
- IRA = share of the images of prompts naming another value of ``D`` whose ``D`` is judged right;
- CRA = share of the images of prompts not naming ``c`` whose ``D'`` is judged right.

A method runs on the domains that a compared table measures it on (ANT's style table adds MACE and
ANT on the styles). Per method, the metrics are averaged over the runs of a domain (UnlearnCanvas averages over its
requests). Published tables live in ``benchmarks/published_tables.json`` (paper, table, URL, cells); for
every table and metric the testbed's per-method averages are compared with the table's by Kendall's τ-b
and Spearman's ρ over the methods both have, and per cell (testbed − published, in points).

Settings, one rule for every method (no per-method tuning): each method's erasekit defaults, which are
its reference settings (docs/erasure.md), with (1) the learning rate × 10 — the testbed was trained at
lr 1e-3, ten times SD's 1e-4 — (2) the iterations ÷ 10 (at least ``MIN_ITERATIONS``), which keeps the
product lr × steps of the reference, and (3) the methods' own samplers at the testbed's 20 steps. The
variant each method runs is the one the published table ran (``VARIANTS``: UnlearnCanvas used the methods'
released code of 2023–24, so UCE runs its 2023 variant, keys from the last word to the end).

Each run is recorded in ``benchmarks/results/validity/<method>-<concept>.json`` as it finishes, with the
method's full configuration (``params``), and a later call skips recorded runs with the same settings and
configuration (resumable in the background); runs recorded before ``params`` was kept are trusted on
their settings alone, and ``--rerun METHODS`` runs a method's recorded runs again (after its code changed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "benchmarks" / "published_tables.json"
RUNS_DIR = ROOT / "benchmarks" / "results" / "validity"
DOCS = ROOT / "docs" / "testbed.md"
START, END = "<!-- validity:start -->", "<!-- validity:end -->"

LR_FACTOR = 10.0
ITERATION_FACTOR = 0.1
MIN_ITERATIONS = 20
SAMPLER_STEPS = 20
SAMPLER_FIELDS = ("ddim_steps", "sample_steps")
#: The variant the published tables ran (UnlearnCanvas: the released code of 2023-24).
VARIANTS: dict[str, dict] = {"uce": {"variant": "2023"}}
DEFAULT_METHODS = ("esd", "uce", "ablating", "salun", "spm", "mace", "ant")
DOMAINS = {"style": "shape", "shape": "style"}  # the erased domain -> the cross domain


def scaled_settings(method: str) -> dict:
    """The method's reference settings scaled to the testbed by the one rule of the module docstring."""
    from erasekit.core.registry import get_method

    config = get_method(method).make_config({})
    out: dict = dict(VARIANTS.get(method, {}))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "lr":
            out["lr"] = float(f"{value * LR_FACTOR:.3g}")
        elif f.name == "iterations":
            out["iterations"] = max(MIN_ITERATIONS, round(value * ITERATION_FACTOR))
        elif f.name in SAMPLER_FIELDS:
            out[f.name] = SAMPLER_STEPS
    return out


def grid() -> list[tuple[str, str, str]]:
    """``(shape, style, prompt)`` for every shape x style, in UnlearnCanvas's prompt form."""
    from erasekit.testbeds.image import world

    return [(sh, st, f"an image of a {sh} in {st} style") for st in world.STYLES for sh in world.SHAPES]


def judge_grid(pipe, classifier, seeds: int, erasure=None) -> dict[str, np.ndarray]:
    """Predicted ``shape`` / ``style`` index per image and the prompts' own (``shape_true``, ``style_true``)."""
    from erasekit.generation import SamplingConfig, generate, prompt_seeds
    from erasekit.testbeds.image import world

    cells = grid()
    prompts = [p for _, _, p in cells for _ in range(seeds)]
    seed_list = prompt_seeds(len(cells), seeds)
    with erasure.applied(pipe) if erasure is not None else contextlib.nullcontext():
        images = generate(pipe, prompts, seed_list, SamplingConfig(), progress=False)
    pred = classifier.predict(images)
    return {
        "shape": pred["shape"],
        "style": pred["style"],
        "shape_true": np.array([world.SHAPES.index(sh) for sh, _, _ in cells for _ in range(seeds)]),
        "style_true": np.array([world.STYLES.index(st) for _, st, _ in cells for _ in range(seeds)]),
    }


def grid_metrics(judged: dict[str, np.ndarray], concept: str, domain: str) -> dict[str, float]:
    """UA, IRA and CRA (in %) of an erasure of ``concept`` (a value of ``domain``) on the judged grid."""
    from erasekit.testbeds.image import world

    cross = DOMAINS[domain]
    idx = world.DOMAIN_VALUES[domain].index(concept)
    target = judged[f"{domain}_true"] == idx
    rest = ~target
    return {
        "UA": 100 * float((judged[domain][target] != idx).mean()),
        "IRA": 100 * float((judged[domain][rest] == judged[f"{domain}_true"][rest]).mean()),
        "CRA": 100 * float((judged[cross][rest] == judged[f"{cross}_true"][rest]).mean()),
    }


def run_one(pipe, classifier, method: str, concept: str, domain: str, settings: dict, seeds: int, model: str = "testbed") -> dict:
    """Erase ``concept`` with ``method`` at ``settings`` and measure it on the grid."""
    from erasekit.api import erase

    torch.manual_seed(0)
    t0 = time.perf_counter()
    erasure = erase(pipe, method, {"targets": [concept]}, model=model, progress=False, **settings)
    seconds = time.perf_counter() - t0
    judged = judge_grid(pipe, classifier, seeds, erasure)
    return {
        "method": method,
        "concept": concept,
        "domain": domain,
        "settings": settings,
        "params": full_params(method, settings),
        "seeds_per_prompt": seeds,
        "metrics": {k: round(v, 2) for k, v in grid_metrics(judged, concept, domain).items()},
        "erase_seconds": round(seconds, 2),
    }


def full_params(method: str, settings: dict) -> dict:
    """Every field of the method's configuration at ``settings`` (what a recorded run must match)."""
    from erasekit.core.registry import get_method

    return dataclasses.asdict(get_method(method).make_config(settings))


def is_current(old: dict, method: str, settings: dict, seeds: int) -> bool:
    """A recorded run can stand: same scaled settings and seeds, and the same full configuration when
    the run recorded it."""
    same = old.get("settings") == settings and old.get("seeds_per_prompt") == seeds
    return same and ("params" not in old or old["params"] == full_params(method, settings))


def run_all(
    methods: list[str], seeds: int, concepts: list[str] | None = None, model: str = "testbed", progress: bool = True,
    rerun: frozenset[str] = frozenset(),
) -> list[dict]:  # fmt: skip
    """Every (method, concept) run on ``model`` (the shipped testbed, or a testbed pipeline directory such
    as a retrained candidate: its runs go to a folder of their own), reusing recorded ones with the same
    settings and seeds."""
    from tqdm import tqdm

    from erasekit.api import load_judge
    from erasekit.core.io import read_json, write_json
    from erasekit.models import load_pipeline
    from erasekit.testbeds.image import world

    pipe = load_pipeline(model)
    classifier = load_judge(model)
    runs_dir = RUNS_DIR if model == "testbed" else RUNS_DIR / Path(model).name
    needed = needed_domains(read_json(PUBLISHED))
    todo = [
        (m, c, d)
        for m in methods
        for d in DOMAINS
        if d in needed.get(m, ())
        for c in world.DOMAIN_VALUES[d]
        if concepts is None or c in concepts
    ]
    runs = []
    for method, concept, domain in tqdm(todo, desc="validity runs", disable=not progress, unit="run"):
        settings = scaled_settings(method)
        path = runs_dir / f"{method}-{concept}.json"
        if path.exists() and method not in rerun:
            old = read_json(path)
            if is_current(old, method, settings, seeds):
                runs.append(old)
                continue
        run = run_one(pipe, classifier, method, concept, domain, settings, seeds, model)
        write_json(path, run)
        runs.append(run)
    judged_base = judge_grid(pipe, classifier, seeds)  # one grid of the base model serves both domains
    base = {d: grid_metrics_base(judged_base, d) for d in DOMAINS}
    return runs + [{"method": "base", "domain": d, "metrics": m} for d, m in base.items()]


def needed_domains(published: dict) -> dict[str, set[str]]:
    """``{method: testbed domains}`` that some compared table measures the method on (a table's
    ``style_*`` metrics need the style runs, ``object_*`` the shape runs)."""
    domain_of = {"style": "style", "object": "shape"}
    out: dict[str, set[str]] = {}
    for table in published["tables"]:
        mapped = table.get("testbed_metrics", {}).values()
        domains = {domain_of[m.lstrip("-").split("_")[0]] for m in mapped}
        for method in table["rows"]:
            out.setdefault(method, set()).update(domains)
    return out


def grid_metrics_base(judged: dict[str, np.ndarray], domain: str) -> dict[str, float]:
    """The base model's UA / IRA / CRA on its judged grid, averaged over the concepts of ``domain``
    (UA is its false-negative rate)."""
    from erasekit.testbeds.image import world

    per = [grid_metrics(judged, c, domain) for c in world.DOMAIN_VALUES[domain]]
    return {k: round(float(np.mean([p[k] for p in per])), 2) for k in ("UA", "IRA", "CRA")}


def averages(runs: list[dict]) -> dict[str, dict[str, float]]:
    """``{method: {"style_UA": ..., "object_IRA": ...}}``: each metric averaged over a domain's runs
    (the testbed's shapes play UnlearnCanvas's objects)."""
    name = {"style": "style", "shape": "object"}
    acc: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for k, v in r["metrics"].items():
            acc.setdefault(r["method"], {}).setdefault(f"{name[r['domain']]}_{k}", []).append(v)
    return {m: {k: round(float(np.mean(v)), 2) for k, v in cols.items()} for m, cols in acc.items()}


def agreement(testbed: dict[str, dict[str, float]], table: dict) -> dict:
    """Kendall's τ-b, Spearman's ρ and per-cell differences of ``testbed`` against one published table."""
    from erasekit.core.stats import kendall_tau, spearman_rho

    out: dict = {}
    for metric, mapped in table["testbed_metrics"].items():
        sign, testbed_metric = (-1.0, mapped[1:]) if mapped.startswith("-") else (1.0, mapped)
        methods = [m for m, row in table["rows"].items() if row.get(metric) is not None and testbed_metric in testbed.get(m, {})]
        real = [table["rows"][m][metric] for m in methods]
        ours = [testbed[m][testbed_metric] for m in methods]
        tau, rho = (kendall_tau(real, ours), spearman_rho(real, ours)) if len(methods) >= 3 else (None, None)
        out[metric] = {
            "testbed_metric": testbed_metric,
            "direction": "opposite (the published metric is lower-is-better)" if sign < 0 else "same",
            "methods": methods,
            "kendall_tau": None if tau is None else round(sign * tau, 3),
            "spearman_rho": None if rho is None else round(sign * rho, 3),
            "difference_points": None if sign < 0 else {m: round(o - r, 2) for m, o, r in zip(methods, ours, real)},
        }
    return out


def render(result: dict) -> str:
    """The *Validity* section of docs/testbed.md (markdown) from the benchmark's JSON."""
    lines = [
        START,
        "### Measured agreement with published real-model tables",
        "",
        f"From `benchmarks/results/validity.json`: every style ({result['n_concepts']['style']}) and every shape "
        f"({result['n_concepts']['shape']}) erased in its own run, {result['seeds_per_prompt']} seeds x "
        f"{result['n_prompts']} prompts `an image of a {{shape}} in {{style}} style` per erased model. Settings: "
        f"{result['rule']}.",
        "",
    ]
    avg = result["testbed"]
    for table in result["tables"]:
        metrics = list(table["agreement"])
        lines += [f"#### {table['title']}", "", f"{table['setting']} Source: {table['url']}", ""]
        lines.append(
            "| method | " + " | ".join(f"{m}: real / testbed {table['agreement'][m]['testbed_metric']}" for m in metrics) + " |"
        )
        lines.append("|---|" + "---|" * len(metrics))
        for method in table["rows"]:
            cells = []
            for m in metrics:
                real = table["rows"][method].get(m)
                ours = avg.get(method, {}).get(table["agreement"][m]["testbed_metric"])
                cells.append(f"{_fmt(real)} / {_fmt(ours)}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if "base" in avg:
            lines.append(
                "| *base model* | "
                + " | ".join(f"– / {_fmt(avg['base'].get(table['agreement'][m]['testbed_metric']))}" for m in metrics)
                + " |"
            )
        lines += ["", "| metric | methods | Kendall τ | Spearman ρ |", "|---|---|---|---|"]
        for m, a in table["agreement"].items():
            lines.append(f"| {m} | {len(a['methods'])} | {_fmt(a['kendall_tau'], 2)} | {_fmt(a['spearman_rho'], 2)} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def _fmt(x, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def write_docs(result: dict) -> None:
    """Replace the section between the markers in docs/testbed.md (append it if absent)."""
    from erasekit.core.io import atomic_path

    text = DOCS.read_text()
    section = render(result)
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with atomic_path(DOCS) as tmp:
        tmp.write_text(text)


def main() -> None:
    from erasekit import __version__
    from erasekit.core.io import read_json
    from erasekit.core.outputs import check_file_output, write_report
    from erasekit.testbeds.image import world

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--concepts", default=None, help="only these concepts (a quick check; the table needs all)")
    ap.add_argument("--out", default="benchmarks/results/validity.json")
    ap.add_argument("--render", action="store_true", help="only re-render docs/testbed.md from --out")
    ap.add_argument("--rerun", default="", help="methods whose recorded runs are run again (their code changed)")
    ap.add_argument("--model", default="testbed", help="a testbed pipeline directory (e.g. a retrained candidate); "
                    "docs/testbed.md is written for the shipped testbed only")  # fmt: skip
    args = ap.parse_args()
    if args.render:
        write_docs(read_json(args.out))
        return
    check_file_output(args.out, "validity", (".json",))  # before an hour of runs, not after
    t0 = time.time()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    concepts = args.concepts.split(",") if args.concepts else None
    rerun = frozenset(m.strip() for m in args.rerun.split(",") if m.strip())
    runs = run_all(methods, args.seeds, concepts, args.model, rerun=rerun)
    testbed = averages(runs)
    published = read_json(PUBLISHED)
    tables = []
    for table in published["tables"]:
        if "testbed_metrics" not in table:
            continue
        tables.append({**table, "agreement": agreement(testbed, table)})
    result = {
        "benchmark": "validity",
        "model": args.model if args.model == "testbed" else Path(args.model).name,
        "erasekit": __version__,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "seeds_per_prompt": args.seeds,
        "n_prompts": len(grid()),
        "n_concepts": {"style": len(world.STYLES), "shape": len(world.SHAPES)},
        "rule": (
            f"each method's reference defaults with lr x {LR_FACTOR:g}, iterations x {ITERATION_FACTOR:g} "
            f"(at least {MIN_ITERATIONS}), its sampler at {SAMPLER_STEPS} steps; variants "
            + ", ".join(f"{m} " + " ".join(f"{k}={x}" for k, x in v.items()) for m, v in VARIANTS.items())
        ),
        "settings": {m: scaled_settings(m) for m in methods},
        "testbed": testbed,
        "tables": tables,
        "runs": [r for r in runs if r["method"] != "base"],
        "seconds": round(time.time() - t0, 1),
    }
    write_report(args.out, result, "validity")
    if args.model == "testbed":
        write_docs(result)
    for t in tables:
        for m, a in t["agreement"].items():
            print(
                f"{t['id']:<28} {m:<12} tau {_fmt(a['kendall_tau'], 2):>6}  rho {_fmt(a['spearman_rho'], 2):>6}  ({len(a['methods'])} methods)"
            )


if __name__ == "__main__":
    main()
