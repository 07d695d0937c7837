"""``erasekit bench``: every method on every concept, evaluated, as JSON and a results table."""

from __future__ import annotations

import os
from pathlib import Path

from erasekit import models
from erasekit.api.commands import model_inputs
from erasekit.api.erasing import erase_stacked, stack_parts
from erasekit.api.judges import load_judge
from erasekit.core import parallel
from erasekit.core.errors import InvalidInputError, MissingFileError
from erasekit.core.io import read_json
from erasekit.core.outputs import check_dir_output, check_file_output, claim_collection, write_report
from erasekit.core.resources import peak_memory_mib, reset_peak_memory

#: What ``bench`` runs on the image testbed unless told otherwise.
DEFAULT_METHODS, DEFAULT_CONCEPTS = ["uce", "time", "rece", "speed"], ["star", "striped", "red", "zorbo"]


def bench(
    methods: list[str] | None = None,
    concepts: list[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    report: str | os.PathLike | None = "default",
    model: str = "testbed",
    seeds: int | None = None,
    contexts: int | None = None,
    params: dict[str, dict] | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
    attacks: list[str] | str | None = None,
    robustness: str | os.PathLike | None = "docs/robustness.md",
    oracle: str | None = "default",
    judge: str | None = None,
    prompts: str | os.PathLike | None = None,
    retain_prompts: str | os.PathLike | None = None,
    limit: int | None = None,
    where: list[str] | None = None,
    samples: int | None = None,
    resume: bool = False,
    backend: str = "local",
    address: str | None = None,
) -> list[dict]:
    """Erase every concept with every method (one concept at a time), evaluate each, write JSON and a report.

    The base model's images are generated once per concept and shared by all methods. With
    ``attacks`` (names, ``"fast"`` or ``"all"``), every erasure is also attacked, and so are the base
    model and the ``oracle`` (when it left the concept out of its training; ``"default"``: the
    shipped one, ``None``: none): their ASR go into each run's JSON (``"attacks"``),
    ``attacks-base-CONCEPT.json`` / ``attacks-oracle-CONCEPT.json``, and the ``robustness`` report
    (Markdown, with a PNG plot of ASR against budget beside it). Defaults: ``methods``
    :data:`DEFAULT_METHODS`, ``concepts`` :data:`DEFAULT_CONCEPTS`, ``out_dir``
    ``benchmarks/results/testbed``, 4 ``seeds`` and 12 ``contexts``.

    On a fact-world language model (:func:`erasekit.api.bench_llm.bench_llm`) ``concepts`` are forget
    splits and ``methods`` the language-model methods (defaults: forget01 and forget05, every method;
    ``out_dir`` ``benchmarks/results/llm``); ``seeds``, ``contexts``, ``device`` and ``dtype`` are refused.

    On any pipeline with ``judge`` and a prompt file ``prompts`` (``retain_prompts``, ``limit``,
    ``where``, ``samples`` as for :func:`erasekit.api.commands.evaluate`):
    :func:`erasekit.api.bench_judged.bench_judged` (``report="default"``: ``OUT/results.md``).

    On the testbed, ``resume`` skips every run recorded in ``out_dir`` with the same settings
    (:func:`run_key`), and the runs may be spread: under torchrun / accelerate each process makes
    its share (:mod:`erasekit.core.parallel`); ``backend="ray"`` submits each run as a Ray task to
    the cluster at ``address`` (default: a local one; :mod:`erasekit.api.bench_ray`). The results
    are the sequential bench's either way.
    """
    kind = models.model_kind(model)
    _check_backend(backend, address)
    if kind == models.CAUSAL_LM:
        from erasekit.api.bench_llm import bench_llm

        models.refuse_options(kind, repr(str(model)), seeds=seeds, contexts=contexts, device=device, dtype=dtype, judge=judge,
                              prompts=prompts, retain_prompts=retain_prompts, limit=limit, where=where, samples=samples,
                              **_testbed_only(resume, backend))  # fmt: skip
        parallel.refuse_sharded("a language-model bench")
        return bench_llm(model, methods, concepts, attacks, params, out_dir=out_dir or "benchmarks/results/llm",
                         report="docs/results.md" if report == "default" else report,
                         robustness=robustness, progress=progress, oracle=None if oracle == "default" else oracle)  # fmt: skip
    if judge is not None or prompts is not None:
        from erasekit.api.bench_judged import bench_judged, check_judged_bench_options
        from erasekit.evaluation.prompt_sets import PromptFiles

        check_judged_bench_options(seeds, contexts, attacks)
        models.refuse_mode("a judged bench (--prompts)", "it applies to the testbed bench", **_testbed_only(resume, backend))
        parallel.join(device)
        return bench_judged(model, methods or ["uce"], concepts or [], judge, PromptFiles(prompts, retain_prompts, limit, where),
                            out_dir or "bench-results", report, params, samples or 1, device=device, dtype=dtype,
                            progress=progress)  # fmt: skip
    models.refuse_mode("the testbed bench (no --prompts)", "it applies to a judged bench with --prompts FILE",
                       retain_prompts=retain_prompts, limit=limit, where=where, samples=samples)  # fmt: skip
    return _bench_testbed(methods or DEFAULT_METHODS, concepts or DEFAULT_CONCEPTS, out_dir or "benchmarks/results/testbed",
                          "docs/results.md" if report == "default" else report, model, 4 if seeds is None else seeds,
                          12 if contexts is None else contexts, params, device, dtype, progress, attacks, robustness,
                          "testbed-oracle" if oracle == "default" else oracle, resume, backend, address)  # fmt: skip


def _testbed_only(resume: bool, backend: str) -> dict:
    """The testbed bench's own options as given (``None``: left at its default), for the refusals of the other benches."""
    return {"resume": resume or None, "backend": None if backend == "local" else backend}


def _check_backend(backend: str, address: str | None) -> None:
    """``backend`` is ``local`` or ``ray``, and ``address`` comes only with ``ray``."""
    if backend not in ("local", "ray"):
        raise InvalidInputError(f"--backend {backend!r}: use local (this process, or the ranks torchrun starts) or ray")
    if address is not None and backend != "ray":
        raise InvalidInputError("--address names a Ray cluster: pass it with --backend ray")


def _bench_testbed(methods, concepts, out_dir, report, model, seeds: int, contexts: int, params, device, dtype, progress, attacks,
                   robustness, oracle, resume: bool = False, backend: str = "local", address: str | None = None) -> list[dict]:  # fmt: skip
    """:func:`bench` on the image testbed."""
    if isinstance(attacks, str):
        attacks = [a for a in attacks.split(",") if a.strip()] or None
    _check_bench_request(methods, concepts, params)
    out_dir, report, robustness = _check_bench_outputs(methods, concepts, out_dir, report, robustness, model, bool(attacks))
    models.check_placement(device, dtype)
    attack_list = _attack_list(attacks)
    if backend == "ray":
        parallel.refuse_sharded("--backend ray (Ray spreads the runs itself)")
    parallel.join(device)  # before the results folder is claimed: rank 0 makes it, the others wait
    claim_collection(out_dir, "bench", what="bench results directory")
    judge = load_judge(model)
    if judge is None:
        raise MissingFileError(f"bench needs a testbed judge; {model!r} has none")
    if backend == "ray":
        from erasekit.api.bench_ray import ray_runs

        runs = ray_runs(methods, concepts, out_dir, model, seeds, contexts, params or {}, attack_list, oracle, device, dtype,
                        progress, resume, address)  # fmt: skip
    else:
        pipe = models.load_pipeline(model, device=device, dtype=dtype)
        runs = _bench_runs(pipe, judge, methods, concepts, out_dir, model, seeds, contexts, params or {}, attack_list, oracle,
                           device, dtype, progress, resume)  # fmt: skip
    all_runs = _recorded_runs(out_dir, runs)
    write_report(out_dir / "results.json", {"runs": all_runs}, "bench-results")
    if report is not None:
        _write_results_table(report, all_runs, methods, concepts, params or {}, out_dir)
    if attack_list and robustness is not None:
        write_robustness(out_dir, robustness)
    return runs


def _check_bench_request(methods: list[str], concepts: list[str], params: dict | None) -> None:
    """Every concept is the testbed's, every method and ``--set method.key=value`` is registered and valid."""
    from erasekit.core.registry import get_method
    from erasekit.evaluation.prompts import resolve_concept

    if not methods or not concepts:
        raise InvalidInputError("bench needs at least one --methods entry and one --concepts entry")
    for c in concepts:
        resolve_concept(c)
    for m in methods:
        stack_parts(m)
    for m, kv in (params or {}).items():  # a typo in --set method.key=value must not be ignored
        get_method(m).make_config(kv)  # an unknown method or parameter, or a bad value, fails here (settings
        # for registered methods outside --methods are checked and kept for scripts that narrow --methods)


def _check_bench_outputs(
    methods, concepts, out_dir, report, robustness, model, attacking: bool
) -> tuple[Path, Path | None, Path | None]:
    """Every file the bench will write, checked before any work: ``(out_dir, report, robustness)``."""
    out_dir = check_dir_output(out_dir, "bench", model_inputs(model), what="bench results directory")
    if report is not None:
        report = check_file_output(report, "results", (".md",), model_inputs(model), what="results table")
    for concept in concepts:
        for method in methods:
            check_file_output(out_dir / f"{method}-{concept}.json", "bench-run", (".json",))
    check_file_output(out_dir / "results.json", "bench-results", (".json",))
    if attacking and robustness is not None:
        robustness = check_file_output(robustness, "robustness", (".md",), model_inputs(model), what="robustness table")
        check_file_output(Path(robustness).with_suffix(".png"), "plot", (".png",), what="robustness plot")
        for concept in concepts:
            for who in ("base", "oracle"):
                check_file_output(out_dir / f"attacks-{who}-{concept}.json", "bench-attacks", (".json",))
    return out_dir, report, robustness


def bench_units(methods: list[str], concepts: list[str], attacking: bool) -> list[tuple[str, str | None]]:
    """The bench's units of work in order: per concept, its reference row (``(concept, None)``: the
    base model and oracle attacked, when ``attacking``), then one run per method ``(concept, method)``.
    Each unit's result depends only on the unit (every method and attack seeds its own generators),
    so any process, Ray worker or later call may make it (:mod:`erasekit.core.parallel`)."""
    units: list[tuple[str, str | None]] = []
    for concept in concepts:
        units += ([(concept, None)] if attacking else []) + [(concept, m) for m in methods]
    return units


def run_key(model, method: str, concept: str, seeds: int, contexts: int, params: dict, attacks: list[str]) -> str:
    """What decides a bench run's numbers (model, method and the settings of its parts, concept, samples,
    attacks), hashed: ``--resume`` skips a run recorded with the same key."""
    import hashlib
    import json

    parts = {p: params.get(p, {}) for p in method.split("+")}
    text = json.dumps([str(model), method, concept, seeds, contexts, parts, sorted(attacks)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _bench_runs(pipe, judge, methods, concepts, out_dir, model, seeds, contexts, params, attack_list, oracle, device, dtype,
                progress, resume: bool = False) -> list[dict]:  # fmt: skip
    """Erase, evaluate (and attack) each concept with each method; one JSON per run, written by the
    process that made it (under torchrun / accelerate each unit is one rank's; every rank gets every run)."""
    from erasekit.judges.testbed import TestbedJudge

    method_judge = TestbedJudge(judge)  # for methods that validate or filter with a judge (loaded once, not per run)
    cache: dict = {}
    setting = dict(model=model, seeds=seeds, contexts=contexts, params=params, attacks=attack_list)

    def unit(u: tuple[str, str | None]) -> dict | None:
        concept, method = u
        if method is None:
            attack_references(pipe, concept, attack_list, out_dir, oracle, device, dtype, progress)
            return None
        if resume and (done := recorded_run(out_dir, method, concept, run_key(method=method, concept=concept, **setting))):
            return done
        return bench_run(pipe, judge, method_judge, method, concept, out_dir, progress=progress, base_cache=cache, **setting)

    done = parallel.current().map(bench_units(methods, concepts, bool(attack_list)), unit, desc="bench", progress=progress)
    return [r for r in done if r is not None]


def bench_run(pipe, judge, method_judge, method: str, concept: str, out_dir: Path, model, seeds: int, contexts: int,
              params: dict, attacks: list[str], progress: bool, base_cache: dict | None = None) -> dict:  # fmt: skip
    """One run: erase ``concept`` with ``method``, evaluate it (and attack it), write ``METHOD-CONCEPT.json``."""
    from erasekit.core.request import ErasureRequest, Target
    from erasekit.evaluation import evaluate_on_testbed

    scope = reset_peak_memory(pipe.device)
    erasure = erase_stacked(pipe, method, ErasureRequest([Target(concept)]), params, judge=method_judge, model=model,
                            progress=progress)  # fmt: skip
    run = evaluate_on_testbed(
        pipe, judge, [concept], erasure=erasure, seeds=seeds, n_contexts=contexts, progress=progress, base_cache=base_cache
    )
    run.update(method=method, concept=concept, model=str(model), judge=method_judge.describe(), peak_memory_mib=peak_memory_mib(pipe.device),
               peak_memory_scope=scope, run_key=run_key(model, method, concept, seeds, contexts, params, attacks))  # fmt: skip
    if attacks:
        run["attacks"] = attacks_of(pipe, erasure, concept, attacks, progress)
    write_report(out_dir / f"{method}-{concept}.json", run, "bench-run")
    return run


def recorded_run(out_dir: Path, method: str, concept: str, key: str) -> dict | None:
    """The run ``METHOD-CONCEPT.json`` recorded in ``out_dir`` when its ``run_key`` is ``key`` (else ``None``)."""
    from erasekit.core.outputs import stamp_of

    path = out_dir / f"{method}-{concept}.json"
    if not path.is_file() or stamp_of(path) != "bench-run":
        return None
    run = _unstamped(read_json(path))
    return run if run.get("run_key") == key else None


def _recorded_runs(out_dir: Path, runs: list[dict]) -> list[dict]:
    """Every run recorded in ``out_dir`` (earlier bench calls included), this call's winning, sorted."""
    from erasekit.core.outputs import stamp_of

    recorded = {
        (r["method"], r["concept"]): r
        for r in (_unstamped(read_json(f)) for f in sorted(out_dir.glob("*.json")) if stamp_of(f) == "bench-run")
    }
    recorded.update({(r["method"], r["concept"]): r for r in runs})
    return [recorded[k] for k in sorted(recorded, key=lambda k: (k[1], k[0]))]


def _write_results_table(report, all_runs: list[dict], methods, concepts, params: dict, out_dir: Path) -> None:
    """The Markdown results table of every recorded run, with how it was made."""
    from erasekit.core.outputs import shown_path, write_markdown
    from erasekit.report.tables import results_markdown

    header = (
        "# Results on the testbed\n\n"
        "Generated by `erasekit bench` (the latest call: "
        f"`erasekit bench --methods {','.join(methods)} --concepts {','.join(concepts)}"
        + "".join(f" --set {m}.{k}={v}" for m, kv in params.items() for k, v in kv.items())
        + f"`; every run recorded in `{shown_path(out_dir)}` is in the table, each with its own settings in its JSON). "
        f"Samples per concept: {_sample_sizes(all_runs)}. Rates in % with 95 % Wilson intervals. "
        "UA: target prompts whose images no longer show the target (higher = more erased); IRA: other concepts of the "
        "domain still drawn (neighbours: the most similar ones); CRA: the other attributes still right; pixel change and "
        "labels kept: same prompt and seed before vs after, on the other concepts' prompts; FD: Fréchet distance of the "
        "judge's features on those prompts. The watermark (no word names it) is erased through its trigger prompt "
        "and measured on its subset's prompts (UA: images without the mark; the base model draws it on about half) "
        "and its carrier (IRA: every prompt's background still drawn; neighbours: the subset's own background)."
    )
    write_markdown(report, results_markdown(all_runs, header), "results")


def _attack_list(attacks: list[str] | None) -> list[str]:
    if not attacks:
        return []
    from erasekit.api.attacking import attack_names

    return attack_names(attacks)


def attacks_of(pipe, erasure, concept: str, names: list[str], progress: bool) -> dict:
    """Every attack's summary (no per-trial findings) against ``erasure`` on ``pipe``."""
    from erasekit.api.attacking import attack
    from erasekit.report.robustness import attack_summary

    results = attack(pipe, erasure, names, concept, progress=progress)
    results = results if isinstance(results, list) else [results]
    return {r.attack: attack_summary(r.to_dict()) for r in results}


def attack_references(pipe, concept, names, out_dir, oracle, device, dtype, progress, base: bool = True) -> None:
    """Attack the base model (``base``), and the oracle when it never saw ``concept``; one JSON each."""
    from erasekit.evaluation.prompts import resolve_concept

    if base and not _covered(out_dir / f"attacks-base-{concept}.json", names):
        write_report(out_dir / f"attacks-base-{concept}.json",
                     {"concept": concept, "label": "base model", "attacks": attacks_of(pipe, None, concept, names, progress)},
                     "bench-attacks")  # fmt: skip
    if not oracle:
        return
    try:
        root = Path(models.resolve_model(oracle))
    except MissingFileError:
        return
    from erasekit.models.profile import profile_at

    if resolve_concept(concept)[0] not in profile_at(root).excluded or _covered(
        out_dir / f"attacks-oracle-{concept}.json", names
    ):
        return
    oracle_pipe = models.load_pipeline(oracle, device=device, dtype=dtype)
    write_report(out_dir / f"attacks-oracle-{concept}.json",
                 {"concept": concept, "label": "oracle", "attacks": attacks_of(oracle_pipe, None, concept, names, progress)},
                 "bench-attacks")  # fmt: skip


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (reports name no home paths)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _covered(path: Path, names: list[str]) -> bool:
    """Whether a reference row recorded earlier already holds every attack in ``names`` (the base
    model's and the oracle's rows do not depend on the methods benched; they are reused)."""
    from erasekit.core.outputs import stamp_of

    return path.is_file() and stamp_of(path) == "bench-attacks" and set(names) <= set(read_json(path).get("attacks", {}))


def write_robustness(out_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """(Re)write the robustness table and plot from every attacked run recorded in ``out_dir``."""
    from erasekit.core.outputs import stamp_of, write_markdown
    from erasekit.report.robustness import plot_curves, robustness_markdown

    out_dir = Path(out_dir)
    rows = []
    for f in sorted(out_dir.glob("*.json")):
        kind = stamp_of(f)
        if kind == "bench-run":
            r = read_json(f)
            if r.get("attacks"):
                rows.append({"concept": r["concept"], "label": r["method"], "ira": r.get("ira"), "attacks": r["attacks"]})
        elif kind == "bench-attacks":
            r = read_json(f)
            rows.append({"concept": r["concept"], "label": r["label"], "ira": None, "attacks": r["attacks"]})
    if not rows:
        raise InvalidInputError(f"no attacked runs in {out_dir}; run erasekit bench --attacks ... first")
    plot = plot_curves(rows, Path(path).with_suffix(".png"))
    header = (
        "# Robustness on the testbed\n\n"
        f"Generated by `erasekit bench --attacks ...` from the runs in `{_shown(out_dir)}`. ASR in % with 95 % Wilson intervals, "
        "one definition for every attack (docs/attacks.md): the share of (prompt, seed) trials whose image shows the concept, "
        "counting trials the plain prompt already shows (*plain*) and those the attack recovers within its budget. "
        "*base model*: the testbed before erasure (the ceiling); *oracle*: the testbed retrained without star, zorbo and the "
        "watermark (the floor: an erasure is as good as retraining under an attack when its ASR lies within the oracle's "
        f"interval). IRA: the erasure's in-domain retention from the same run. Plot: `{plot.name}` (ASR against budget)."
    )
    return write_markdown(path, robustness_markdown(rows, header), "robustness")


def _sample_sizes(runs: list[dict]) -> str:
    """``2 seeds x 6 contexts (star, zorbo); 8 seeds x 6 contexts (watermark)`` from the runs' JSON."""
    by_size: dict[str, list[str]] = {}
    for r in runs:
        s = r.get("samples", {})
        key = f"{s.get('seeds_per_prompt', '?')} seeds x {s.get('contexts', '?')} contexts"
        if r["concept"] not in by_size.setdefault(key, []):
            by_size[key].append(r["concept"])
    return "; ".join(f"{k} ({', '.join(v)})" for k, v in by_size.items())


def _unstamped(report: dict) -> dict:
    """A report read back without its output stamp (it is stamped again when written)."""
    from erasekit.core.outputs import STAMP_KEY

    return {k: v for k, v in report.items() if k != STAMP_KEY}
