"""``erasekit bench --model testbed-llm``: every unlearning method × forget split, evaluated against
the base model and the oracle, optionally attacked, written as one JSON per run and as the
"language models" sections of ``docs/results.md`` and ``docs/robustness.md``."""

from __future__ import annotations

import os
from pathlib import Path

from erasekit.core.errors import ConfigError
from erasekit.core.io import read_json

SECTION = "language-models"


def bench_llm(model: str = "testbed-llm", methods: list[str] | None = None, splits: list[str] | None = None,
              attacks: str | list[str] | None = None, params: dict[str, dict] | None = None,
              out_dir: str | os.PathLike = "benchmarks/results/llm", report: str | os.PathLike | None = "docs/results.md",
              robustness: str | os.PathLike | None = "docs/robustness.md", progress: bool = True,
              oracle: str | None = None) -> list[dict]:  # fmt: skip
    """Run, record and tabulate (module docstring). ``params``: per-method parameters
    (``{"npo": {"epochs": 5}}``); a method named ``name@variant`` runs ``name`` with the parameters
    given for ``name@variant`` and is recorded as its own row (a second configuration of one method); ``attacks``: ``None``, ``"all"``, ``"fast"`` or names; ``oracle``:
    the oracle model for every split (default: the shipped oracle of each split)."""
    from erasekit.api.attacking import attack_names
    from erasekit.api.unlearning import evaluate_lm, fact_world_of, lm_method, oracle_for, unlearn
    from erasekit.core.outputs import check_file_output, claim_collection
    from erasekit.models.causal_lm import load_lm
    from erasekit.testbeds.facts.factworld import SPLITS

    methods = methods or [
        "ga",
        "graddiff",
        "npo",
        "simnpo",
        "idk-dpo",
        "undial",
        "rmu",
        "elm",
        "task-vector",
        "leace",
        "refusal-guard",
    ]
    splits = splits or ["forget01", "forget05"]
    for m in methods:
        lm_method(m.partition("@")[0])
    for s in splits:
        if s not in SPLITS:
            raise ConfigError(f"unknown forget split {s!r}; choose from {', '.join(SPLITS)}")
    names = attack_names(attacks, family="causal-lm") if attacks else []
    for path, kind in ((report, "results"), (robustness, "robustness")):
        if path is not None:
            check_file_output(path, kind, (".md",), what=f"{kind} table")
    out = claim_collection(out_dir, "bench", what="bench results directory")
    lm = load_lm(model)
    if fact_world_of(lm) is None:
        raise ConfigError(f"{model} is not a fact-world model; the bench needs its exact answers")
    runs = []
    fixed_oracle = oracle
    for split in splits:
        oracle = fixed_oracle or oracle_for(lm, split)
        if oracle is None:
            raise ConfigError(f"no oracle for {split}: train one with 'erasekit testbed train --llm --exclude {split}'")
        cache: dict = {}
        base_eval = evaluate_lm(lm, None, split, oracle, cache=cache)
        for label, target in (("base", lm), ("oracle", oracle)):  # both rows hold the evaluation that has both blocks
            found = _attacks(target, None, names, split, progress)
            runs.append(_record(out, f"{split}-{label}", {"split": split, "label": label, "eval": base_eval, "attacks": found}))
        for method in methods:
            erasure = unlearn(
                lm, method.partition("@")[0], split, model=model, progress=progress, **(params or {}).get(method, {})
            )
            ev = evaluate_lm(lm, erasure, split, oracle, cache=cache)
            found = _attacks(lm, erasure, names, split, progress)
            run = {"split": split, "label": method, "params": erasure.params, "eval": ev, "attacks": found}
            runs.append(_record(out, f"{split}-{method}", run))
            if progress:
                from tqdm.auto import tqdm

                f = ev["forget"]
                tqdm.write(f"{split} {method}: forgotten {f['forgotten']['rate']:.2f}, FQ {f.get('forget_quality', 0):.3g}, "
                           f"utility {ev['retain']['model_utility']:.3f}")  # fmt: skip
    render_llm_tables(out, report, robustness, out_dir)
    return runs


def render_llm_tables(out_dir: str | os.PathLike, report: str | os.PathLike | None = "docs/results.md",
                      robustness: str | os.PathLike | None = "docs/robustness.md", shown: str | os.PathLike | None = None) -> None:  # fmt: skip
    """(Re)write ``results.json`` and the "language models" sections from every run recorded in ``out_dir``."""
    from erasekit.core.outputs import shown_path, stamp_of, write_report, write_section
    from erasekit.report.llm import llm_results_markdown, llm_robustness_markdown

    out = Path(out_dir)
    recorded = [read_json(p) for p in sorted(out.glob("*.json")) if stamp_of(p) == "bench-llm-run"]
    write_report(out / "results.json", {"runs": recorded}, "bench-results")
    header_r = (
        "## Language models\n\nGenerated by `erasekit bench --model testbed-llm` from the runs in "
        f"`{shown or shown_path(out_dir)}` (docs/unlearning.md has the definitions). The fact-world GPT-2 (`testbed-llm`), "
        "each method at its defaults with the model's recommended settings (its learning rate; ELM's prompts of the world) (a `method@variant` row: another "
        "configuration, its settings in its JSON and docs/unlearning.md); *base*: before unlearning; "
        "*oracle*: retrained without the split's authors (the target). forgotten: forget questions no longer "
        "answered exactly (95 % Wilson interval); truth ratio: TOFU's forget aggregate (oracle-like ≈ the "
        "oracle's value; geometric mean over the perturbed answers); forget quality: KS p-value "
        "(scipy's ks_2samp) against the oracle's truth ratios (higher = closer to retraining); model utility: "
        "harmonic mean of retain, neighbour and filler scores; privacy leak: MUSE's PrivLeak, the forget-vs-holdout "
        "Min-K% (k = 40 %) AUC relative to the oracle's (0 ideal, negative = under-unlearned, −100 = remembers all)."
    )
    if report is not None:
        write_section(report, SECTION, llm_results_markdown(recorded, header_r), "results")
    attacked = [r for r in recorded if r.get("attacks")]
    if robustness is not None and attacked:
        from erasekit.report.robustness import plot_curves

        all_names = sorted({a for r in attacked for a in r["attacks"]})
        curves = [{"concept": r["split"], "label": "base model" if r["label"] == "base" else r["label"], "attacks": r["attacks"]}
                  for r in attacked]  # fmt: skip
        plot = plot_curves(curves, Path(robustness).with_name("robustness-llm.png"))
        header_a = (
            "## Language models\n\nGenerated by `erasekit bench --model testbed-llm --attacks ...`. ASR in % with 95 % "
            "Wilson intervals on the forget facts (one trial per fact, exact-answer judge; docs/unlearning.md#attacks): "
            "shown by the plain question (*plain*) or recovered within the attack's budget. The oracle's row is the floor. "
            f"Plot: `{plot.name}` (ASR against budget)."
        )
        write_section(robustness, SECTION, llm_robustness_markdown(attacked, all_names, header_a), "robustness")


def _attacks(model, erasure, names: list[str], split: str, progress: bool) -> dict[str, dict]:
    """``{attack: result}`` of every attack in ``names`` against ``model`` (one call, so a model given
    by name, such as the oracle, is loaded once)."""
    from erasekit.api.unlearning import attack_lm

    if not names:
        return {}
    results = attack_lm(model, erasure, names, split, progress=progress)
    results = results if isinstance(results, list) else [results]
    return {r.attack: r.to_dict() for r in results}


def _record(out: Path, name: str, run: dict) -> dict:
    from erasekit.core.outputs import write_report

    write_report(out / f"{name}.json", run, "bench-llm-run")
    return run
