"""The Python API behind the CLI commands (same names, same arguments)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from .core.errors import InvalidInputError, MissingFileError
from .core.io import read_json
from .core.outputs import IMAGE_SUFFIXES, check_dir_output, check_file_output, claim_collection, write_report
from .generation import SamplingConfig, generate, make_grid, save_image, warn_unknown_words
from .models import is_testbed, load_pipeline, pick_device, resolve_model, testbed_classifier_path


def load_judge(model: str | os.PathLike = "testbed", classifier: str | os.PathLike | None = None):
    """The testbed classifier that judges images of ``model``'s world, or ``None`` outside the testbed.

    An explicit ``classifier`` path wins; otherwise the shipped judge for ``testbed``, or a
    ``classifier.safetensors`` beside a pipeline exported from a testbed.
    """
    from .testbed.classifier import load_classifier

    if classifier is not None:
        if not Path(classifier).is_file():
            raise MissingFileError(f"classifier weights {classifier} do not exist")
        return load_classifier(classifier)
    if is_testbed(model):
        return load_classifier(testbed_classifier_path())
    candidate = Path(str(model)) / "classifier.safetensors"
    return load_classifier(candidate) if candidate.is_file() else None


def model_inputs(model: str | os.PathLike) -> list[str]:
    """The local directory behind ``model`` (to protect from outputs), or nothing for a hub id (or a
    name that resolves to nothing: loading it reports that)."""
    from .core.errors import ErasekitError

    try:
        source = resolve_model(model)
    except ErasekitError:
        return []
    return [source] if Path(source).exists() else []


def describe_labels(pred: dict, i: int) -> str:
    """Two short caption lines for image ``i`` from classifier predictions."""
    from .testbed.classifier import LABEL_NAMES

    names = {k: LABEL_NAMES[k][pred[k][i]] for k in pred}
    wm = " +wm" if names["watermark"] == "present" else ""
    return f"{names['colour']} {names['shape']}\n{names['style']} {names['background']}{wm}"


def generate_grid(
    model: str,
    prompt: str,
    out: str | os.PathLike,
    n: int = 8,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    negative_prompt: str | None = None,
    labels: bool = True,
    device: str | None = None,
) -> Path:
    """Generate ``n`` images of ``prompt`` (seeds ``seed..seed+n-1``) and save a grid at ``out``."""
    if n < 1:
        raise InvalidInputError(f"-n must be at least 1, got {n}")
    sampling = SamplingConfig(steps=steps, guidance_scale=guidance, negative_prompt=negative_prompt)
    sampling.validate()
    out = check_file_output(out, "image", IMAGE_SUFFIXES, model_inputs(model), what="image grid")  # fail fast, before anything heavy
    pick_device(device)
    pipe = load_pipeline(model, device=device)
    judge = load_judge(model) if labels else None
    if judge is not None:
        from .testbed.world import vocabulary

        warn_unknown_words(prompt, set(vocabulary()))
    images = generate(pipe, [prompt] * n, list(range(seed, seed + n)), sampling)
    captions = None
    if judge is not None:
        pred = judge.predict(images)
        captions = [describe_labels(pred, i) for i in range(n)]
    return save_image(make_grid(images, captions), out)


def check_testbed(
    out: str | os.PathLike,
    model: str = "testbed",
    seeds: int = 8,
    steps: int | None = None,
    guidance: float | None = None,
    classifier: str | os.PathLike | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Run the quality gate on ``model`` and write the JSON report to ``out``."""
    from .testbed.gate import run_gate

    if seeds < 1:
        raise InvalidInputError(f"seeds must be at least 1, got {seeds}")
    out = check_file_output(out, "gate", (".json",), model_inputs(model), what="gate report")
    pick_device(device)
    judge = load_judge(model, classifier) if classifier is not None else None
    judge = judge or load_judge(model)
    if judge is None:
        raise MissingFileError(f"no testbed classifier found for {model!r}; pass --classifier PATH")
    pipe = load_pipeline(model, device=device)
    report = run_gate(pipe, judge, seeds=seeds, sampling=SamplingConfig(steps=steps, guidance_scale=guidance), progress=progress)
    report["model"] = str(model)
    write_report(out, report, "gate")
    return report


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


def run_demo(out: str | os.PathLike = "erasekit-demo", seeds: int = 2, device: str | None = None) -> list[str]:
    """The main job on the testbed: what the model draws, the quality gate, then erase, evaluate and compare.

    1. a labelled grid of the demo prompts (``grid.png``) and a quick quality gate (``gate.json``);
    2. the erasures of ``DEMO_ERASURES``: UCE erases the shape ``star`` and the character ``zorbo``,
       ESD-x (fine-tuning) the shape ``star`` (``erasure-<method>/``);
    3. each is evaluated before and after (``eval-<method>.json``) and all are shown side by side
       (``before_after.png``).
    """
    from .core.request import ErasureRequest, Target
    from .evaluation import evaluate_on_testbed
    from .testbed.gate import summary_lines

    out = check_dir_output(out, "demo", what="demo directory")
    pick_device(device)
    for name in ("grid.png", "before_after.png"):
        check_file_output(out / name, "image", IMAGE_SUFFIXES)
    for name in ("gate.json", "demo.json", *(f"eval-{m}.json" for m, _, _ in DEMO_ERASURES)):
        check_file_output(out / name, {"gate.json": "gate", "demo.json": "demo"}.get(name, "evaluation"), (".json",))
    for m, _, _ in DEMO_ERASURES:
        check_dir_output(out / f"erasure-{m}", "erasure")
    claim_collection(out, "demo", what="demo directory")
    t0 = time.time()
    pipe = load_pipeline("testbed", device=device)
    judge = load_judge("testbed")
    per = 4
    prompts = [p for p in DEMO_PROMPTS for _ in range(per)]
    images = generate(pipe, prompts, [s for _ in DEMO_PROMPTS for s in range(per)], desc="demo grid")
    pred = judge.predict(images)
    captions = [f"{p[:21]}\n" + describe_labels(pred, i) for i, p in enumerate(prompts)]
    save_image(make_grid(images, captions, cols=per * 2), out / "grid.png")
    report = check_testbed(out / "gate.json", seeds=seeds, device=device)
    lines = [f"labelled grid of {len(prompts)} images: {out / 'grid.png'}", ""]
    lines += summary_lines(report)
    if seeds < 8:
        lines.append(f"(a quick gate with {seeds} seeds per prompt; the full gate is 'erasekit testbed check --out gate.json')")

    erasures = []
    for method, params, concepts in DEMO_ERASURES:
        request = ErasureRequest([Target(c) for c in concepts])
        erasure = erase(pipe, method, request, model="testbed", **params)
        erasure.save(out / f"erasure-{method}")
        ev = evaluate_on_testbed(pipe, judge, request.concepts, erasure=erasure, seeds=seeds, n_contexts=6, progress=True)
        write_report(out / f"eval-{method}.json", ev, "evaluation")
        erasures.append((method, erasure))
        lines += ["", f"{method} erased {', '.join(request.concepts)} in {erasure.timings['seconds']:.2f}s "
                  f"({len(erasure.changed_tensors())} tensors, {erasure.num_bytes() / 2**20:.2f} MiB)", ""]
        lines += _eval_table(ev)

    compare = ["a red filled star on a black background", "zorbo", "a blue striped circle on a gray background", "pipa"]
    flat = [p for p in compare for _ in range(per)]
    flat_seeds = [s for _ in compare for s in range(per)]
    columns = [("before", generate(pipe, flat, flat_seeds, progress=False))]
    for method, erasure in erasures:
        erasure.apply(pipe)
        try:
            columns.append((method, generate(pipe, flat, flat_seeds, progress=False)))
        finally:
            erasure.remove(pipe)
    preds = [judge.predict(imgs) for _, imgs in columns]
    both = np.stack([imgs[i] for i in range(len(flat)) for _, imgs in columns])
    caps = [f"{name}: {flat[i][:12] if name == 'before' else ''}\n" + describe_labels(pred, i)
            for i in range(len(flat)) for (name, _), pred in zip(columns, preds)]
    save_image(make_grid(both, caps, cols=len(columns) * 2), out / "before_after.png")
    lines.append(f"before/after grid: {out / 'before_after.png'}")
    reports = [out / "gate.json", *(out / f"eval-{m}.json" for m, _ in erasures)]
    lines.append(f"reports: {', '.join(map(str, reports))}  ({time.time() - t0:.0f}s)")
    write_report(out / "demo.json", {"prompts": list(DEMO_PROMPTS), "erasures": [{"method": m, "params": p, "concepts": c} for m, p, c in DEMO_ERASURES],
                                    "seconds": round(time.time() - t0, 1)}, "demo")  # fmt: skip
    return lines


def _eval_table(ev: dict) -> list[str]:
    """Before/after rows (UA, UA on synonyms, IRA, IRA on neighbours, CRA) of an evaluation report."""
    lines = [f"{'target':<8}{'':<8}{'UA':>7}{'UA syn':>8}{'IRA':>7}{'IRA nb':>8}{'CRA':>7}"]
    for b, a in zip(ev["base"]["targets"], ev["targets"]):
        for name, t in (("base", b), ("erased", a)):
            cells = [t["ua"], t["ua_synonym"], t["ira"], t["ira_neighbours"], t["cra"]]
            text = ["   n/a" if c["rate"] is None else f"{c['rate']:6.2f}" for c in cells]
            lines.append(f"{t['concept'] if name == 'base' else '':<8}{name:<8}{text[0]:>7}{text[1]:>8}{text[2]:>7}{text[3]:>8}{text[4]:>7}")
    fid = ev["fidelity"]
    lines.append(f"fidelity on other prompts: mean pixel change {fid['pixel_change']:.4f}, labels unchanged {fid['labels_unchanged']['rate']:.2f}")
    return lines


# --------------------------------------------------------------------------------------------------
# Erasure
# --------------------------------------------------------------------------------------------------


def _model_name(pipe, model: str | None) -> str:
    return str(model) if model is not None else str(getattr(pipe, "name_or_path", "") or type(pipe).__name__)


def with_testbed_implicit(pipe, request):
    """On a testbed model, a target naming one of the world's implicit concepts (``watermark``) and given
    no prompts of its own is erased through its trigger prompts (see docs/erasure.md, implicit concepts)."""
    from .testbed.exact import pipe_is_testbed
    from .testbed.world import IMPLICIT_TRIGGERS

    return request.with_implicit(IMPLICIT_TRIGGERS) if pipe_is_testbed(pipe) else request


def _sample_sizes(runs: list[dict]) -> str:
    """``2 seeds x 6 contexts (star, zorbo); 8 seeds x 6 contexts (watermark)`` from the runs' JSON."""
    by_size: dict[str, list[str]] = {}
    for r in runs:
        s = r.get("samples", {})
        key = f"{s.get('seeds_per_prompt', '?')} seeds x {s.get('contexts', '?')} contexts"
        if r["concept"] not in by_size.setdefault(key, []):
            by_size[key].append(r["concept"])
    return "; ".join(f"{k} ({', '.join(v)})" for k, v in by_size.items())


def check_vocabulary(pipe, request) -> None:
    """On a closed-vocabulary testbed model, every word of the request must be one the model knows."""
    from .core.errors import ConfigError
    from .testbed.exact import pipe_is_testbed
    from .testbed.world import vocabulary

    if not pipe_is_testbed(pipe):
        return

    vocab = set(vocabulary())
    phrases = [p for t in request.targets for p in (*t.phrases(), t.anchor or "")] + list(request.preserve)
    unknown = sorted({w for p in phrases for w in p.lower().split() if w not in vocab})
    if unknown:
        raise ConfigError(
            f"not in the testbed's vocabulary: {', '.join(unknown)} (see docs/testbed.md for its {len(vocab)} words; "
            "a concept no word names is erased through the prompts that show it: --trigger PROMPT)"
        )


def check_request_text(pipe, request) -> None:
    """Every text the request encodes (targets, synonyms, triggers, anchors, preserved concepts, each
    with its template expansions) must fit the text encoder's context: longer text would be cut off."""
    from .generation import check_prompt

    for prompt, _ in request.prompted_phrases():
        check_prompt(pipe, prompt, "concept")
    for t in request.targets:
        if t.anchor:
            for prompt in request.expand(t.anchor):
                check_prompt(pipe, prompt, "anchor")
    for prompt in request.preserve_prompts():
        check_prompt(pipe, prompt, "preserved concept")


def erase(
    pipe,
    method: str,
    request,
    model: str | None = None,
    progress: bool = True,
    judge=None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    monitor=None,
    **params,
):
    """Compute an erasure of ``request`` with ``method`` on ``pipe`` (left unchanged) -> :class:`Erasure`.

    ``pipe`` is a loaded diffusers pipeline or a model name for :func:`load_pipeline`. Methods that
    validate (RECE) get ``judge`` (default on a testbed model: the testbed classifier). Training
    methods write periodic checkpoints to ``checkpoint_dir`` and continue from them when ``resume``
    (only a checkpoint of the same run: method, config, request and base model); those that accept a
    ``monitor(step, weights) -> (metrics, stop)`` get it (benchmarks, early stop). A result holding NaN
    or infinity is an error, never an erasure.
    """
    from . import __version__
    from .core.erasure import Erasure, check_finite, hash_tensors, model_fingerprint
    from .core.errors import ConfigError, ErasekitError, UnsupportedModelError
    from .core.registry import get_method
    from .core.request import ErasureRequest
    from .families import get_adapter

    if isinstance(request, dict):
        request = ErasureRequest.from_dict(request)
    spec = get_method(method)
    config = spec.make_config(params)
    if isinstance(pipe, (str, os.PathLike)):
        model = str(pipe) if model is None else model
        pipe = load_pipeline(pipe)
    adapter = get_adapter(pipe)
    if adapter.name not in spec.families:
        raise UnsupportedModelError(f"method {method!r} does not support the {adapter.name} family (it supports: {', '.join(spec.families)})")
    request = with_testbed_implicit(pipe, request)
    check_vocabulary(pipe, request)
    check_request_text(pipe, request)
    extra = {}
    if "judge" in spec.accepts:
        if judge is None:
            from .evaluation.judges import TestbedJudge

            root = getattr(pipe, "name_or_path", None)
            classifier = load_judge(root) if root and Path(root).is_dir() else None
            judge = TestbedJudge(classifier) if classifier is not None else None
        extra["judge"] = judge
    if spec.trains:
        if checkpoint_dir is not None:
            from .training import checkpoints

            identity = checkpoints.run_identity(method, config, request, model_fingerprint(pipe))
            checkpoint_dir = checkpoints.prepare(checkpoint_dir, identity, resume)
        elif resume:
            raise ConfigError("resume needs a checkpoint directory (--checkpoints DIR) to continue from")
        extra.update(checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir), resume=resume)
    elif resume or checkpoint_dir is not None:
        raise ErasekitError(f"method {method!r} does not train, so it has no checkpoints to write or resume")
    if monitor is not None:
        if "monitor" not in spec.accepts:
            raise ErasekitError(f"method {method!r} does not accept a training monitor")
        extra["monitor"] = monitor
    t0 = time.perf_counter()
    result = spec.fn(pipe, request, config, adapter=adapter, progress=progress, **extra)
    seconds = time.perf_counter() - t0
    from .core.erasure import get_tensor, lora_deltas

    check_finite(result.weights, f"{method} produced a broken erasure")
    check_finite(result.lora, f"{method} produced a broken LoRA")
    if result.attachment is not None:
        check_finite(result.attachment.tensors(), f"{method} produced a broken attachment")
    originals = {k: get_tensor(pipe, k).detach() for k in result.weights}
    # new values in the model's own dtype (a float32 student of a half-precision model is cast back)
    cast = {k: v.detach().to(originals[k].device, originals[k].dtype) for k, v in result.weights.items()}
    check_finite(cast, f"{method}'s erasure overflows the model's {next(iter(originals.values())).dtype if originals else 'dtype'}")
    changed = {k: v.to("cpu").contiguous() for k, v in cast.items() if not torch.equal(v, originals[k])}
    deltas = lora_deltas(result.lora)
    if not changed and not any(bool(d.any()) for d in deltas.values()) and result.attachment is None:
        raise ErasekitError(f"method {method!r} changed no weight for this request (a silent no-op); check the request and parameters")
    originals.update({k: get_tensor(pipe, k).detach() for k in deltas})
    return Erasure(
        method=method,
        params=dataclasses.asdict(config),
        request=request,
        base_model=_model_name(pipe, model),
        base_hash=hash_tensors({k: originals[k] for k in sorted(set(changed) | set(deltas))}),
        weights=changed,
        family=adapter.name,
        timings={"seconds": round(seconds, 4)},
        info=result.info,
        version=__version__,
        lora=result.lora,
        attachment=result.attachment,
    )


def _reset_peak_rss() -> str:
    """Reset the process's peak-RSS counter (Linux: ``/proc/self/clear_refs``); returns the scope the
    next :func:`_peak_rss_mib` covers: ``"run"`` after a reset, else ``"process"`` (since start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "run"
    except OSError:
        return "process"


def _peak_rss_mib() -> float:
    """Peak resident memory in MiB: VmHWM (since the last reset) where available, else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def export_pipeline(erasure_dir: str | os.PathLike, model: str, out: str | os.PathLike, force: bool = False, device: str | None = None) -> Path:
    """Apply a saved erasure to ``model`` and write a complete diffusers pipeline directory at ``out``."""
    import shutil

    from .core.erasure import Erasure
    from .core.errors import IncompatibleErasureError
    from .core.io import atomic_path, write_json
    from .core.outputs import write_manifest

    out = check_dir_output(out, "pipeline", [*model_inputs(model), erasure_dir], what="pipeline directory")
    pick_device(device)
    erasure = Erasure.load(erasure_dir)
    if erasure.attachment is not None:
        raise IncompatibleErasureError(
            f"{erasure_dir} adds {erasure.attachment.kind} modules to the model, which a plain diffusers pipeline cannot hold; "
            "apply it with erasekit instead: Erasure.load(dir).apply(pipe)"
        )
    source = Path(resolve_model(model))
    pipe = load_pipeline(model, device=device)
    erasure.apply(pipe, force=force)
    with atomic_path(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for extra in ("classifier.safetensors", "testbed.json"):  # keep a testbed's judge and sampling defaults
            if (source / extra).is_file():
                shutil.copyfile(source / extra, tmp / extra)
        if (source / "tokenizer" / "vocab.json").is_file():
            for f in ("vocab.json", "merges.txt"):
                shutil.copyfile(source / "tokenizer" / f, tmp / "tokenizer" / f)
        write_json(tmp / "erasure.json", erasure.metadata())
        write_manifest(tmp, "pipeline", files=True)
    return out


def evaluate(
    out: str | os.PathLike | None = None,
    model: str = "testbed",
    erasure: str | os.PathLike | None = None,
    concepts: list[str] | None = None,
    seeds: int = 4,
    contexts: int = 12,
    steps: int | None = None,
    guidance: float | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate an erasure directory (or, without one, the base model on ``concepts``) on the testbed."""
    from .core.erasure import Erasure
    from .core.errors import ConfigError
    from .evaluation import evaluate_on_testbed
    from .evaluation.prompts import resolve_concept

    if seeds < 1 or contexts < 1:
        raise InvalidInputError("seeds and contexts must be at least 1")
    if out is not None:
        out = check_file_output(out, "evaluation", (".json",), model_inputs(model), what="evaluation report")
    pick_device(device)
    loaded = Erasure.load(erasure) if erasure is not None else None
    targets = list(concepts or (loaded.request.concepts if loaded else []))
    if not targets:
        raise ConfigError("nothing to evaluate: pass --erasure DIR, or --concept NAME to measure the base model")
    for t in targets:
        resolve_concept(t)
    resolve_model(model)
    judge = load_judge(model)
    if judge is None:
        raise ConfigError(f"evaluation needs a testbed judge; {model!r} has none (real-model judges come later)")
    pipe = load_pipeline(model, device=device)
    if loaded is not None:  # before any image is generated
        loaded.check_compatible(pipe, hint="evaluate it on the model it was made from")
    report = evaluate_on_testbed(
        pipe, judge, targets, erasure=loaded, seeds=seeds, n_contexts=contexts,
        sampling=SamplingConfig(steps=steps, guidance_scale=guidance), progress=progress,
    )  # fmt: skip
    report["model"] = str(model)
    report["erasure"] = str(erasure) if erasure is not None else None
    if out is not None:
        write_report(out, report, "evaluation")
    return report


def bench(
    methods: list[str],
    concepts: list[str],
    out_dir: str | os.PathLike = "benchmarks/results/testbed",
    report: str | os.PathLike | None = "docs/results.md",
    model: str = "testbed",
    seeds: int = 4,
    contexts: int = 12,
    params: dict[str, dict] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Erase every concept with every method (one concept at a time), evaluate each, write JSON and a report.

    The base model's images are generated once per concept and shared by all methods.
    """
    from .core.request import ErasureRequest, Target
    from .evaluation import evaluate_on_testbed
    from .evaluation.prompts import resolve_concept
    from .report.tables import results_markdown

    if not methods or not concepts:
        raise InvalidInputError("bench needs at least one --methods entry and one --concepts entry")
    for c in concepts:
        resolve_concept(c)
    from .core.registry import get_method

    for m in methods:
        get_method(m)
    for m, kv in (params or {}).items():  # a typo in --set method.key=value must not be ignored
        if m not in methods:
            raise InvalidInputError(f"--set names method {m!r}, which is not among --methods ({', '.join(methods)})")
        get_method(m).make_config(kv)
    out_dir = check_dir_output(out_dir, "bench", model_inputs(model), what="bench results directory")
    pick_device(device)
    if report is not None:
        report = check_file_output(report, "results", (".md",), model_inputs(model), what="results table")
    for concept in concepts:
        for method in methods:
            check_file_output(out_dir / f"{method}-{concept}.json", "bench-run", (".json",))
    check_file_output(out_dir / "results.json", "bench-results", (".json",))
    claim_collection(out_dir, "bench", what="bench results directory")
    judge = load_judge(model)
    if judge is None:
        raise MissingFileError(f"bench needs a testbed judge; {model!r} has none")
    pipe = load_pipeline(model, device=device)
    from .evaluation.judges import TestbedJudge

    method_judge = TestbedJudge(judge)  # for methods that validate or filter with a judge (loaded once, not per run)
    cache: dict = {}
    runs = []
    for concept in concepts:
        for method in methods:
            request = ErasureRequest([Target(concept)])
            scope = _reset_peak_rss()
            erasure = erase(pipe, method, request, model=model, progress=progress, judge=method_judge, **(params or {}).get(method, {}))
            run = evaluate_on_testbed(pipe, judge, [concept], erasure=erasure, seeds=seeds, n_contexts=contexts, progress=progress, base_cache=cache)
            run.update(method=method, concept=concept, model=str(model), peak_memory_mib=_peak_rss_mib(), peak_memory_scope=scope)
            write_report(out_dir / f"{method}-{concept}.json", run, "bench-run")
            runs.append(run)
    # The report covers every run recorded in out_dir (earlier bench calls included), newest wins.
    from .core.outputs import stamp_of

    recorded = {(r["method"], r["concept"]): r for r in (_unstamped(read_json(f)) for f in sorted(out_dir.glob("*.json")) if stamp_of(f) == "bench-run")}
    recorded.update({(r["method"], r["concept"]): r for r in runs})
    all_runs = [recorded[k] for k in sorted(recorded, key=lambda k: (k[1], k[0]))]
    write_report(out_dir / "results.json", {"runs": all_runs}, "bench-results")
    if report is not None:
        from .core.outputs import write_markdown

        header = (
            "# Results on the testbed\n\n"
            "Generated by `erasekit bench` (the latest call: "
            f"`erasekit bench --methods {','.join(methods)} --concepts {','.join(concepts)}"
            + "".join(f" --set {m}.{k}={v}" for m, kv in (params or {}).items() for k, v in kv.items())
            + f"`; every run recorded in `{out_dir}` is in the table, each with its own settings in its JSON). "
            f"Samples per concept: {_sample_sizes(all_runs)}. Rates in % with 95 % Wilson intervals. "
            "UA: target prompts whose images no longer show the target (higher = more erased); IRA: other concepts of the "
            "domain still drawn (neighbours: the most similar ones); CRA: the other attributes still right; pixel change and "
            "labels kept: same prompt and seed before vs after, on the other concepts' prompts; FD: Fréchet distance of the "
            "judge's features on those prompts. The watermark (no word names it) is erased through its trigger prompt "
            "and measured on its subset's prompts (UA: images without the mark; the base model draws it on about half) "
            "and its carrier (IRA: every prompt's background still drawn; neighbours: the subset's own background)."
        )
        write_markdown(report, results_markdown(all_runs, header), "results")
    return runs


def _unstamped(report: dict) -> dict:
    """A report read back without its output stamp (it is stamped again when written)."""
    from .core.outputs import STAMP_KEY

    return {k: v for k, v in report.items() if k != STAMP_KEY}
