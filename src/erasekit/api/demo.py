"""``erasekit demo``: the main job on the testbed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from erasekit import models
from erasekit.api.commands import check_testbed
from erasekit.api.erasing import erase
from erasekit.api.judges import describe_labels, load_judge
from erasekit.core.outputs import IMAGE_SUFFIXES, check_dir_output, check_file_output, claim_collection, write_report
from erasekit.generation import generate, make_grid, save_image

DEMO_PROMPTS = (
    "a red filled circle on a black background",
    "a blue striped square on a gray background",
    "a yellow dotted triangle on a black background",
    "a green outline star on a gray background",
    "a purple filled heart on a white background",
    "an orange striped cross on a black background",
    "a red dotted diamond on a gray background",
    "a blue filled crescent on a white background",
    "zorbo",
    "a picture of pipa",
    "grock",
    "a shape",
)

#: (method, parameters, concepts) the demo erases. ESD runs with the testbed settings measured in
#: benchmarks/results/esd_time_to_ua.json (its 20-step sampler, a higher learning rate than SD's).
DEMO_ERASURES: tuple[tuple[str, dict, list[str]], ...] = (
    ("uce", {}, ["star", "zorbo"]),
    ("esd", {"train_method": "esd-x", "ddim_steps": 20, "iterations": 200, "lr": 1e-4}, ["star"]),
)


def run_demo(
    out: str | os.PathLike | None = None,
    seeds: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    llm: bool = False,
) -> list[str]:
    """The main job on the testbed: what the model draws, the quality gate, then erase, evaluate and compare.

    1. a labelled grid of the demo prompts (``grid.png``) and a quick quality gate (``gate.json``);
    2. the erasures of ``DEMO_ERASURES``: UCE erases the shape ``star`` and the character ``zorbo``,
       ESD-x (fine-tuning) the shape ``star`` (``erasure-<method>/``);
    3. each is evaluated before and after (``eval-<method>.json``) and all are shown side by side
       (``before_after.png``);
    4. a short red team: the fast attacks against every erasure and concept (``redteam.json``),
       naming the attack that brought a concept back.

    ``out`` defaults to ``erasekit-demo`` and ``seeds`` to 2. With ``llm``, the language-model demo
    instead (:func:`run_demo_llm`, default ``out`` ``erasekit-demo-llm``).
    """
    if llm:
        from erasekit.core.errors import ConfigError

        if seeds is not None:
            raise ConfigError("seeds= applies to the image demo only; the --llm demo evaluates every forget fact (drop seeds)")
        return run_demo_llm("erasekit-demo-llm" if out is None else out, device=device, dtype=dtype)
    out = _check_demo_outputs("erasekit-demo" if out is None else out)
    seeds = 2 if seeds is None else seeds
    models.check_placement(device, dtype)
    claim_collection(out, "demo", what="demo directory")
    t0 = time.time()
    pipe = models.load_pipeline("testbed", device=device, dtype=dtype)
    judge = load_judge("testbed")
    lines = _demo_grid_and_gate(pipe, judge, out, seeds, device, dtype)
    erasures = []
    for method, params, concepts in DEMO_ERASURES:
        erasure, more = _demo_erasure(pipe, judge, out, method, params, concepts, seeds)
        erasures.append((method, erasure))
        lines += more
    lines.append(f"before/after grid: {_before_after(pipe, judge, erasures, out / 'before_after.png')}")
    lines += ["", *_red_team(pipe, erasures, out / "redteam.json")]
    reports = [out / "gate.json", *(out / f"eval-{m}.json" for m, _ in erasures), out / "redteam.json"]
    lines.append(f"reports: {', '.join(map(str, reports))}  ({time.time() - t0:.0f}s)")
    write_report(out / "demo.json", {"prompts": list(DEMO_PROMPTS), "erasures": [{"method": m, "params": p, "concepts": c} for m, p, c in DEMO_ERASURES],
                                    "seconds": round(time.time() - t0, 1)}, "demo")  # fmt: skip
    from erasekit.report.html import write_html_report

    page = write_html_report([out / "grid.png", *reports, out / "before_after.png"], out / "report.html", "erasekit demo")
    lines.append(f"HTML report: {page}")
    return lines


#: Images per demo prompt in the demo's grids.
_PER_PROMPT = 4


def _check_demo_outputs(out) -> Path:
    """The demo directory and every file it will write, checked before any work."""
    out = check_dir_output(out, "demo", what="demo directory")
    for name in ("grid.png", "before_after.png"):
        check_file_output(out / name, "image", IMAGE_SUFFIXES)
    check_file_output(out / "report.html", "report", (".html",))
    for name in ("gate.json", "demo.json", "redteam.json", *(f"eval-{m}.json" for m, _, _ in DEMO_ERASURES)):
        check_file_output(
            out / name, {"gate.json": "gate", "demo.json": "demo", "redteam.json": "attack"}.get(name, "evaluation"), (".json",)
        )
    for m, _, _ in DEMO_ERASURES:
        check_dir_output(out / f"erasure-{m}", "erasure")
    return out


def _demo_grid_and_gate(pipe, judge, out: Path, seeds: int, device, dtype) -> list[str]:
    """Step 1: the labelled grid of the demo prompts and a quick quality gate."""
    from erasekit.testbeds.image.gate import summary_lines

    prompts = [p for p in DEMO_PROMPTS for _ in range(_PER_PROMPT)]
    images = generate(pipe, prompts, [s for _ in DEMO_PROMPTS for s in range(_PER_PROMPT)], desc="demo grid")
    pred = judge.predict(images)
    captions = [f"{p[:21]}\n" + describe_labels(pred, i) for i, p in enumerate(prompts)]
    save_image(make_grid(images, captions, cols=_PER_PROMPT * 2), out / "grid.png")
    report = check_testbed(out / "gate.json", seeds=seeds, device=device, dtype=dtype)
    lines = [f"labelled grid of {len(prompts)} images: {out / 'grid.png'}", "", *summary_lines(report)]
    if seeds < 8:
        lines.append(f"(a quick gate with {seeds} seeds per prompt; the full gate is 'erasekit testbed check --out gate.json')")
    return lines


def _demo_erasure(pipe, judge, out: Path, method: str, params: dict, concepts, seeds: int):
    """Steps 2 and 3 for one method: erase, save, evaluate; the erasure and its lines."""
    from erasekit.core.request import ErasureRequest, Target
    from erasekit.evaluation import evaluate_on_testbed

    request = ErasureRequest([Target(c) for c in concepts])
    erasure = erase(pipe, method, request, model="testbed", **params)
    erasure.save(out / f"erasure-{method}")
    ev = evaluate_on_testbed(pipe, judge, request.concepts, erasure=erasure, seeds=seeds, n_contexts=6, progress=True)
    write_report(out / f"eval-{method}.json", ev, "evaluation")
    lines = [
        "",
        f"{method} erased {', '.join(request.concepts)} in {erasure.timings['seconds']:.2f}s "
        f"({len(erasure.changed_tensors())} tensors, {erasure.num_bytes() / 2**20:.2f} MiB)",
        "",
    ]
    return erasure, lines + _eval_table(ev)


def _before_after(pipe, judge, erasures, path: Path) -> Path:
    """The same prompts and seeds before and under each erasure, side by side and labelled by the judge."""
    compare = ["a red filled star on a black background", "zorbo", "a blue striped circle on a gray background", "pipa"]
    flat = [p for p in compare for _ in range(_PER_PROMPT)]
    flat_seeds = [s for _ in compare for s in range(_PER_PROMPT)]
    columns = [("before", generate(pipe, flat, flat_seeds, progress=False))]
    for method, erasure in erasures:
        with erasure.applied(pipe):
            columns.append((method, generate(pipe, flat, flat_seeds, progress=False)))
    preds = [judge.predict(imgs) for _, imgs in columns]
    both = np.stack([imgs[i] for i in range(len(flat)) for _, imgs in columns])
    caps = [
        f"{name}: {flat[i][:12] if name == 'before' else ''}\n" + describe_labels(pred, i)
        for i in range(len(flat))
        for (name, _), pred in zip(columns, preds)
    ]
    save_image(make_grid(both, caps, cols=len(columns) * 2), path)
    return path


def _red_team(pipe, erasures, path) -> list[str]:
    """The fast attacks against every (erasure, concept) with 12 trials each; one line per pair
    naming what brought the concept back (the full suite: erasekit attack --attack all)."""
    from erasekit.api.attacking import attack, attack_names, trial_prompts
    from erasekit.report.robustness import attack_summary

    names = attack_names("fast")
    lines = [f"red team ({', '.join(names)}; about 12 trials each; ASR = shown before or recovered):"]
    record = []
    for method, erasure in erasures:
        for concept in erasure.request.concepts:
            results = attack(
                pipe, erasure, names, concept, seeds=max(1, 12 // len(trial_prompts(concept, True, None))), progress=False
            )
            results = results if isinstance(results, list) else [results]
            cells = "  ".join(f"{r.attack} {r.asr:4.0%}" for r in results)
            back = [r for r in results if r.recovered > 0]
            verdict = ("-> " + ", ".join(f"{r.attack} brought it back ({r.recovered:.0%} of trials)" for r in back)
                       if back else "-> no fast attack brought it back")  # fmt: skip
            lines.append(f"  {method} {concept:<6} {cells}  {verdict}")
            record.append(
                {"method": method, "concept": concept, "attacks": {r.attack: attack_summary(r.to_dict()) for r in results}}
            )
    write_report(path, {"red_team": record}, "attack")
    lines.append(
        f"  the whole suite ({len(attack_names('all'))} attacks, 10-15 minutes per erasure on 2 cores): erasekit attack --erasure DIR --attack all"
    )
    return lines


def _eval_table(ev: dict) -> list[str]:
    """Before/after rows (UA, UA on synonyms, IRA, IRA on neighbours, CRA) of an evaluation report."""
    lines = [f"{'target':<8}{'':<8}{'UA':>7}{'UA syn':>8}{'IRA':>7}{'IRA nb':>8}{'CRA':>7}"]
    for b, a in zip(ev["base"]["targets"], ev["targets"]):
        for name, t in (("base", b), ("erased", a)):
            cells = [t["ua"], t["ua_synonym"], t["ira"], t["ira_neighbours"], t["cra"]]
            text = ["   n/a" if c["rate"] is None else f"{c['rate']:6.2f}" for c in cells]
            lines.append(
                f"{t['concept'] if name == 'base' else '':<8}{name:<8}{text[0]:>7}{text[1]:>8}{text[2]:>7}{text[3]:>8}{text[4]:>7}"
            )
    fid = ev["fidelity"]
    lines.append(
        f"fidelity on other prompts: mean pixel change {fid['pixel_change']:.4f}, labels unchanged {fid['labels_unchanged']['rate']:.2f}"
    )
    return lines


def run_demo_llm(out: str | os.PathLike = "erasekit-demo-llm", device: str | None = None, dtype: str | None = None,
                 method: str = "npo", split: str = "forget01") -> list[str]:  # fmt: skip
    """``erasekit demo --llm``: one unlearning run on the fact-world language model, with its evaluation.

    1. ``testbed-llm`` answers a few questions about the authors of ``split`` (what it knows);
    2. ``method`` unlearns the split (``erasure-<method>/``) and the same questions are asked again;
    3. the erasure is evaluated against the base model and the oracle retrained without the split
       (``eval-<method>.json``: forgotten share, forget quality, model utility, privacy leak);
    4. a short red team: the fast language-model attacks (``redteam.json``).
    """
    from erasekit.api.unlearning import attack_lm, evaluate_lm, fact_world_of, forget_request, unlearn
    from erasekit.core.registry import all_attacks
    from erasekit.evaluation.lm.metrics import greedy_answers
    from erasekit.models.causal_lm import load_lm

    out = check_dir_output(out, "demo", what="demo directory")
    for name, kind in ((f"eval-{method}.json", "evaluation"), ("redteam.json", "attack"), ("answers.json", "demo")):
        check_file_output(out / name, kind, (".json",))
    check_dir_output(out / f"erasure-{method}", "erasure", what="erasure directory")
    models.check_placement(device, dtype)
    lm = load_lm("testbed-llm", device=device, dtype=dtype)
    claim_collection(out, "demo", what="demo directory")
    world = fact_world_of(lm)
    lines = [f"testbed-llm: a {sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f} M-parameter GPT-2 that knows "
             f"{world.n_authors} invented authors; unlearning {split} ({len(world.forget(split))} authors) with {method}"]  # fmt: skip
    questions = [qa for a in world.forget(split) for qa in world.qa(a)[::2]][:4]
    before = greedy_answers(lm.model, lm.tokenizer, [q.question for q in questions])
    t0 = time.time()
    erasure = unlearn(lm, method, forget_request(lm, split), model="testbed-llm", progress=True)
    erasure.save(out / f"erasure-{method}")
    with erasure.applied(lm):
        after = greedy_answers(lm.model, lm.tokenizer, [q.question for q in questions])
    lines.append(f"unlearned in {time.time() - t0:.0f}s ({len(erasure.weights)} tensors, {erasure.num_bytes() / 2**20:.1f} MiB)")
    for q, b, a in zip(questions, before, after):
        lines.append(f"  Q: {q.question}\n     before: {b}\n     after:  {a}")
    write_report(out / "answers.json", {"questions": [q.question for q in questions], "before": before, "after": after}, "demo")
    ev = evaluate_lm(lm, erasure, split, out=out / f"eval-{method}.json")
    f, base, oracle = ev["forget"], ev["base"], ev["oracle"]
    lines.append(f"{'':<8}{'forgot':>8}{'FQ':>9}{'utility':>9}{'leak %':>8}")
    for name, row in (("base", base), ("oracle", oracle)):
        if row is not None:
            lines.append(f"{name:<8}{row['forgotten']['rate']:>8.2f}{row.get('forget_quality', float('nan')):>9.2g}"
                         f"{row['model_utility']:>9.3f}{row.get('privacy_leak', float('nan')):>8.1f}")  # fmt: skip
    lines.append(f"{method:<8}{f['forgotten']['rate']:>8.2f}{f.get('forget_quality', float('nan')):>9.2g}"
                 f"{ev['retain']['model_utility']:>9.3f}{f.get('privacy_leak', float('nan')):>8.1f}")  # fmt: skip
    fast = [a.name for a in all_attacks("causal-lm") if a.fast]
    results = attack_lm(lm, erasure, fast, split, out=out / "redteam.json", progress=False)
    for r in results if isinstance(results, list) else [results]:
        lines.append(f"red team: {r.attack:<13} ASR {r.asr:.0%} (plain {r.asr_before:.0%}, recovered {r.recovered:+.0%})")
    lines.append(f"wrote {out}")
    return lines
