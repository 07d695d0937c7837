"""``erasekit attack``: run registered attacks against a model (with or without an erasure) and
report their attack success rates (see :mod:`erasekit.attacks.base` for the one ASR definition)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from erasekit import models
from erasekit.api.judges import model_judge
from erasekit.attacks.base import AttackResult, Tracker
from erasekit.attacks.diffusion.arena import Arena, with_copies
from erasekit.core import parallel
from erasekit.core.errors import ConfigError, InvalidInputError, UnsupportedModelError
from erasekit.core.outputs import check_file_output, write_report
from erasekit.core.registry import AttackSpec, all_attacks, get_attack
from erasekit.generation import SamplingConfig

#: Trials per attack when ``seeds`` is not given: seeds are chosen so prompts x seeds reaches this.
DEFAULT_TRIALS = 24
JUDGE_NAME = "testbed classifier (classifier.safetensors; shows = the concept's label, all attributes for a character)"


def attack_names(names: str | list[str], family: str = "diffusion") -> list[str]:
    """``"all"``, ``"fast"``, one name or a comma-separated list of names, checked against the registry
    (``all`` and ``fast`` mean the attacks of ``family``; a named attack of another family is an error)."""
    items = names.split(",") if isinstance(names, str) else list(names)
    items = [n.strip() for n in items if n.strip()]
    if not items:
        raise ConfigError("no attack named: pass --attack NAME, a comma-separated list, 'fast' or 'all' (see 'erasekit attacks')")
    out: list[str] = []
    for n in items:
        if n == "all":
            out += [a.name for a in all_attacks(family)]
        elif n == "fast":
            out += [a.name for a in all_attacks(family) if a.fast]
        else:
            out.append(get_attack(n, family).name)
    return list(dict.fromkeys(out))


def attacked_pipeline(pipe, erasure):
    """A pipeline sharing ``pipe``'s unchanged components, with the erasure applied to copies of the
    ones it changes (the user's pipeline is never modified)."""
    if erasure is None:
        return pipe
    from erasekit.models.diffusion import get_adapter

    adapter = get_adapter(pipe)
    names = {k.split(".", 1)[0] for k in erasure.touched()}
    if erasure.attachment is not None:
        names |= set(adapter.trainable_components(pipe))
    clone = with_copies(pipe, sorted(names))
    erasure.applied(clone)  # stays applied: the clone exists only for this attack
    return clone


def trial_prompts(concept: str, testbed: bool, prompts: list[str] | None) -> list[str]:
    """The prompts that name (or trigger) ``concept``: the evaluation's target prompts on a testbed,
    else the user's."""
    if prompts:
        return list(dict.fromkeys(prompts))
    if not testbed:
        raise ConfigError(f"attacking {concept!r} on this model needs the prompts that show it: pass --prompt (repeatable)")
    from erasekit.evaluation.prompts import prompt_set

    return [p.prompt for p in prompt_set(concept) if p.group == "target"]


def reference_model(pipe, reference, device, dtype):
    """The model that draws the concept: ``reference`` if given, else the one an oracle names in its
    testbed.json (``"reference"``), else ``None`` (the attacked model before its erasure)."""
    if reference is not None:
        return (
            reference
            if not isinstance(reference, (str, os.PathLike))
            else models.load_pipeline(reference, device=device, dtype=dtype)
        )
    from erasekit.models.profile import profile_of

    named = profile_of(pipe).reference
    return models.load_pipeline(named, device=device, dtype=dtype) if named else None


def run_attack(spec: AttackSpec, arena: Arena, config, progress: bool = True, before=None) -> AttackResult:
    """Run one attack in ``arena``: judge the plain prompts, let the attack spend its budget, and
    collect the result. ``before``: the plain prompts' ``(images, shown)`` if already known."""
    t0 = time.time()
    if before is None:
        images = arena.generate_trials(list(range(len(arena.trials))))
        before = (images, arena.shows(images))
    from tqdm.auto import tqdm

    with tqdm(total=config.budget, desc=f"{spec.name} ({spec.budget_unit})", disable=not progress or config.budget == 0,
              leave=False, mininterval=1) as bar:  # fmt: skip
        tracker = Tracker(arena.trials, before[1], before[0], arena.shows, config.budget, bar=bar)
        info = spec.fn(arena, config, tracker, progress=progress) if config.budget > 0 else None
    from dataclasses import asdict

    return AttackResult(
        attack=spec.name, concept=arena.concept, model="", erasure=None, budget=int(config.budget),
        budget_unit=spec.budget_unit, records=tracker.records, curve=tracker.curve(), seconds=time.time() - t0,
        judge=judge_label(arena.judge), config=asdict(config), info=dict(info or {}),
    )  # fmt: skip


def attack(
    model="testbed",
    erasure=None,
    attack: str | list[str] | None = None,
    concept: str | None = None,
    budget: int | None = None,
    seeds: int | None = None,
    params: dict | None = None,
    prompts: list[str] | None = None,
    reference=None,
    out: str | os.PathLike | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
    grid: str | os.PathLike | None = None,
    judge: str | None = None,
    prompt_file: str | os.PathLike | None = None,
    limit: int | None = None,
    where: list[str] | None = None,
    cache: str | os.PathLike | None = None,
    guard=None,
    batch_size: int | None = None,
) -> AttackResult | list[AttackResult]:
    """Attack ``model`` (a name, directory or loaded pipeline) with ``erasure`` applied (an Erasure,
    its directory, or None for the model itself) and report whether ``concept`` comes back.

    ``attack``: a registered name, a list, ``"fast"`` or ``"all"``; ``budget`` overrides the
    attack's default budget and ``params`` its other settings (``{"lr": 0.01}``); ``seeds``: seeds
    per prompt (default: enough for about 24 trials); ``prompts``: the prompts that show the concept
    (default on a testbed: the evaluation's target prompts); ``reference``: the model that draws the
    concept (default: ``model`` without the erasure, or the testbed for an oracle). Writes the JSON
    to ``out`` when given, and every trial's judged image as a grid to ``grid`` when given. Returns
    one :class:`AttackResult`, or a list for several attacks. ``attack`` defaults to ``synonyms``.

    On any pipeline: ``judge`` names a registered judge (``NAME[:k=v,...]``, e.g. ``nudenet``; the
    result records how it describes itself) and ``prompt_file`` a prompt set (``limit`` and
    ``where`` select rows) whose prompts join ``prompts`` as the trials' prompts. ``cache``: an image
    cache directory for the trials' plain images (drawn once across runs and attacks) and every finished
    attack (a rerun, or a killed run, makes only the attacks it has not finished). ``guard``: a
    guard (an erasure of kind guard, or its directory) stacked on ``erasure``, or alone.
    ``batch_size``: images drawn per batch (default 128). Under torchrun / accelerate launch the
    plain trial images are drawn in shards and each attack of a list is one rank's; the results
    are the one-process results (:mod:`erasekit.core.parallel`).

    On a fact-world language model (:func:`erasekit.api.unlearning.attack_lm`) ``concept`` is the
    forget split whose facts should come back (default: the erasure's) and ``attack`` defaults to
    ``fast``; the image-only arguments (seeds, prompts, reference, steps, guidance, grid) are refused.
    """
    kind = models.kind_of_any(model)
    if kind == models.CAUSAL_LM:
        from erasekit.api.unlearning import attack_lm

        parallel.refuse_sharded("attacking a language model")

        subject = repr(str(model)) if isinstance(model, (str, os.PathLike)) else "the model"
        models.refuse_options(kind, subject, seeds=seeds, prompts=prompts, reference=reference, steps=steps, guidance=guidance,
                              grid=grid, judge=judge, prompt_file=prompt_file, limit=limit, where=where, cache=cache,
                              batch_size=batch_size)  # fmt: skip
        from erasekit.core.erasure import stacked

        return attack_lm(model, erasure if guard is None else stacked(erasure, guard), "fast" if attack is None else attack,
                         concept, budget=budget, params=params, out=out, device=device, dtype=dtype, progress=progress)  # fmt: skip
    shards = parallel.join(device)  # before any output is claimed: rank 0 makes folders, the others wait
    if seeds is not None and seeds < 1:
        raise InvalidInputError(f"--seeds must be >= 1, got {seeds}")
    SamplingConfig(
        steps=steps, guidance_scale=guidance, batch_size=SamplingConfig.batch_size if batch_size is None else batch_size
    ).validate()
    specs, configs = _attack_configs("synonyms" if attack is None else attack, budget, params)
    prompts = _with_prompt_file(prompts, prompt_file, limit, where)
    loaded_pipe, out, loaded = _inputs_checked(model, erasure, out, guard)
    grid = _grid_checked(grid)
    store = None
    if cache is not None:
        from erasekit.evaluation.cache import ImageCache

        store = ImageCache(cache)
    if concept is None:
        if loaded is None or not loaded.request.concepts:
            raise ConfigError("nothing to attack: pass --concept NAME (or an --erasure whose request names one)")
        concept = loaded.request.concepts[0]
    arena, root = _arena(model, loaded, concept, prompts, seeds, reference, device, dtype, steps, guidance, judge, batch_size)
    _check_families(specs, arena.bench.adapter.name)
    images, cached = plain_trial_images(arena, loaded, store)
    before = (images, arena.shows(images))
    # under torchrun / accelerate each attack is one rank's (they share no randomness: each seeds its own generator)
    made = shards.map(list(zip(specs, configs)), lambda sc: kept_attack(sc[0], sc[1], arena, loaded, store, progress, before))
    results = [r for r, _ in made]
    for result, restored in made:
        result.model, result.erasure = models.model_label(root if loaded_pipe else model), _erasure_label(erasure, loaded, guard)
        if cached is not None:
            result.info["image_cache"] = {**cached, "attack_restored": restored}
    save_trial_grid(results, grid)
    _name_grid(results, grid, out)
    return attack_results(results, out)


def _check_families(specs: list, family: str) -> None:
    """Refuse, before any image is drawn, the attacks that do not apply to a ``family`` pipeline
    (``AttackSpec.kinds``: an attack that edits the token embeddings needs a hookable text encoder)."""
    refused = [s for s in specs if family not in s.kinds]
    if refused:
        names = ", ".join(s.name for s in refused)
        raise UnsupportedModelError(
            f"{names} cannot attack {family} models (they apply to {', '.join(refused[0].kinds)}: they edit the token "
            f"embeddings of a text encoder erasekit can hook); choose other attacks: 'erasekit attacks' lists them"
        )


def _attack_configs(attack: str | list[str], budget: int | None, params: dict | None) -> tuple[list, list]:
    """The attacks named and their configs: ``params`` for one attack; one budget for several (those
    with few options capped at their count); the configs check the budget."""
    specs = [get_attack(n) for n in attack_names(attack)]
    if params and len(specs) > 1:
        raise ConfigError("--set applies to one attack; run attacks with their own settings one at a time")
    if len(specs) == 1:  # the config checks the budget (>= 0, and at most the options of a bounded attack)
        return specs, [specs[0].make_config({**(params or {}), **({"budget": budget} if budget is not None else {})})]
    return specs, [s.make_config({} if budget is None else {"budget": min(budget, s.budget_max)}) for s in specs]


def kept_attack(spec: AttackSpec, config, arena: Arena, erasure, store, progress: bool, before) -> tuple[AttackResult, bool]:
    """``(result, restored)``: :func:`run_attack`, or with an image cache ``store`` the result it kept
    from an earlier run of the same attack (model, erasure, reference, trials, sampler, judge and
    settings); a result made now is kept there, so a killed run resumes with the attacks it finished."""
    if store is None:
        return run_attack(spec, arena, config, progress=progress, before=before), False
    from dataclasses import asdict

    key = store.unit_key("attack", store.model_key(arena.pipe, erasure), store.model_key(arena.reference), spec.name,
                         asdict(config), [(t.prompt, t.seed) for t in arena.trials], arena.steps, arena.guidance,
                         judge_label(arena.judge))  # fmt: skip
    kept = store.result(key)
    if kept is not None:
        return AttackResult.from_dict(kept[0], arena.trials, kept[1]), True
    result = run_attack(spec, arena, config, progress=progress, before=before)
    store.keep(key, result.to_dict(), result.images)
    return result, False


def plain_trial_images(arena: Arena, erasure, cache) -> tuple:
    """``(images, cache stats or None)`` of every trial's plain prompt in ``arena``, read from the
    :class:`~erasekit.evaluation.cache.ImageCache` ``cache`` where drawn before (keyed by the attacked model's weights, the
    erasure, prompt, seed and the arena's sampler)."""
    if cache is None:  # batches of the arena's size, batch k drawn by rank k mod N under torchrun / accelerate
        drawn = parallel.current().map_batches(len(arena.trials), arena.batch_size, arena.generate_trials)
        return (np.concatenate(drawn) if drawn else arena.generate_trials([])), None
    store = cache
    model = store.model_key(arena.pipe, erasure)
    sampler = SamplingConfig(steps=arena.steps, guidance_scale=arena.guidance)
    keys = [store.key(model, t.prompt, t.seed, sampler, "erasekit-arena") for t in arena.trials]
    images = store.through(keys, arena.generate_trials, arena.batch_size)
    return images, store.stats()


def _name_grid(results: list[AttackResult], grid, out) -> None:
    """Record the trial grid in each result (relative to the report's folder), for the HTML report."""
    if grid is None:
        return
    where = os.path.relpath(grid, Path(out).parent) if out is not None else str(grid)
    for r in results:
        r.info["grid"] = where


def _with_prompt_file(prompts, prompt_file, limit, where) -> list[str] | None:
    """``prompts`` and the prompts of ``prompt_file`` (its rows selected by ``limit`` / ``where``)."""
    if prompt_file is None:
        if limit is not None or where:
            raise ConfigError("--limit and --where select rows of a prompt file: pass --prompts FILE with them")
        return prompts
    from erasekit.evaluation.prompt_sets import read_prompt_set

    return [*(prompts or []), *(r.prompt for r in read_prompt_set(prompt_file, limit, where))]


def _grid_checked(grid: str | os.PathLike | None):
    """The attack grid's path, checked as an image output before any work (``None`` stays ``None``)."""
    if grid is None:
        return None
    return check_file_output(grid, "image", (".png", ".jpg", ".jpeg", ".webp"), what="attack grid")


def save_trial_grid(results: list[AttackResult], grid: str | os.PathLike | None) -> None:
    """Every trial's judged image of ``results`` as one captioned grid at ``grid`` (nothing when ``None``)."""
    if grid is None:
        return
    import numpy as np

    from erasekit.generation import make_grid, save_image

    images = np.concatenate([r.images for r in results])
    captions = [f"{r.attack[:10]}\n{'shown' if rec.success else '-'}" for r in results for rec in r.records]
    save_image(make_grid(images, captions, cols=min(12, len(images))), grid)


def attack_results(results: list[AttackResult], out: str | os.PathLike | None, protect=()) -> AttackResult | list[AttackResult]:
    """One result (or the list, for several attacks), written to ``out`` when given: one attack's
    report, or ``{"attacks": [...]}`` (image and language-model attacks alike)."""
    if out is not None:
        data = results[0].to_dict() if len(results) == 1 else {"attacks": [r.to_dict() for r in results]}
        write_report(out, data, "attack", protect)
    return results[0] if len(results) == 1 else results


def _inputs_checked(model, erasure, out, guard=None):
    """``(loaded_pipe, out, loaded erasure)``: the output path checked (never one of the inputs) and
    the erasure loaded (with ``guard`` stacked on it), before any model is."""
    from erasekit.core.erasure import stacked

    loaded_pipe = not isinstance(model, (str, os.PathLike))
    if out is not None:
        inputs = [] if loaded_pipe else _inputs(model, erasure) + ([str(guard)] if isinstance(guard, (str, os.PathLike)) else [])
        out = check_file_output(out, "attack", (".json",), inputs, what="attack report")
    return loaded_pipe, out, stacked(erasure, guard)


def _erasure_label(erasure, loaded, guard=None) -> str | None:
    """How a report names the erasure: its directory, or its method for one passed in memory; a
    stacked guard (``--guard``) follows as ``+ guard G``."""

    def shown(what, kind: str) -> str:
        return str(what) if isinstance(what, (str, os.PathLike)) else f"{what.method} {kind} (in memory)"

    if guard is None:
        return None if erasure is None else shown(erasure, "erasure")
    g = f"guard {shown(guard, 'guard')}"
    return g if erasure is None else f"{shown(erasure, 'erasure')} + {g}"


def _judge_of(model, concept: str, judge_spec: str | None):
    """``(root, judge, concept)`` of an attack: the testbed classifier (concept canonicalised) or a
    registered judge built from ``judge_spec``; one line when the judge cannot tell ``concept``."""
    from erasekit.judges.testbed import TestbedJudge

    if judge_spec is not None:
        from erasekit.judges import make_judge

        loaded_pipe = not isinstance(model, (str, os.PathLike))
        root = getattr(model, "name_or_path", None) if loaded_pipe else model
        judge = make_judge(judge_spec, kind=models.DIFFUSION, model=root or "testbed")
        if not judge.knows(concept):
            raise ConfigError(f"the {judge_spec.split(':')[0]} judge cannot tell {concept!r} (see 'erasekit judges')")
        return root, judge, concept
    root, classifier = model_judge(model, "an attack")
    tj = TestbedJudge(classifier)
    if not tj.knows(concept):
        raise ConfigError(f"the judge cannot tell {concept!r}: attack a concept of the testbed world (see docs/testbed.md)")
    return root, tj, _canonical(concept)


def judge_label(judge) -> str | dict:
    """How an attack result names its judge: the testbed classifier's fixed description, or a
    registered judge's own ``describe()`` (name, package, version, classes, threshold, weights)."""
    from erasekit.judges.testbed import TestbedJudge

    return JUDGE_NAME if isinstance(judge, TestbedJudge) or not hasattr(judge, "describe") else judge.describe()


def _canonical(concept: str) -> str:
    from erasekit.evaluation.prompts import resolve_concept

    return resolve_concept(concept)[0]


def _inputs(model, erasure) -> list[str]:
    from erasekit.api.commands import model_inputs

    return model_inputs(model) + ([str(erasure)] if isinstance(erasure, (str, os.PathLike)) else [])


PROCEDURES = ("quantization", "relearning", "latent-inversion")  # what these find is a procedure: replay re-runs it


def replay(
    source: str | os.PathLike | dict,
    model="testbed",
    erasure=None,
    out: str | os.PathLike | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
    grid: str | os.PathLike | None = None,
    guard=None,
) -> AttackResult:
    """Re-run what an attack found (its JSON) on another model or erasure (``guard``: stacked on it, or
    alone): transfer between methods.

    Prompts are typed again, inserted vectors written into the same slots, compositions composed
    again, on the same trials (prompts and seeds). Attacks whose finding is a procedure (quantization,
    relearning, latent inversion) are run again with the same settings. The result uses the same ASR
    definition, judged on the new model (``asr_before``: its plain prompts)."""
    parallel.refuse_sharded("replaying an attack")
    data, spec, records, prompts = _replay_source(source)
    if spec.name in PROCEDURES:
        config = {k: v for k, v in data.get("config", {}).items() if k in {n for n, *_ in spec.parameters()}}
        budget = config.pop("budget", None)
        return attack(model, erasure, spec.name, data["concept"], budget=budget, seeds=len(records) // len(prompts),
                      params=config, prompts=prompts, out=out, device=device, dtype=dtype, progress=progress,
                      grid=grid, guard=guard)  # fmt: skip
    loaded_pipe, out, loaded = _inputs_checked(model, erasure, out, guard)
    grid = _grid_checked(grid)
    arena, root = _arena(model, loaded, data["concept"], prompts, len(records) // len(prompts), None, device, dtype)
    seeds = [t.seed for t in arena.trials]
    if seeds != [r["seed"] for r in records] or [t.prompt for t in arena.trials] != [r["prompt"] for r in records]:
        raise InvalidInputError("the report's trials are not in erasekit's order (prompt-major, distinct seeds); was it edited?")
    t0 = time.time()
    images = arena.generate_trials(list(range(len(arena.trials))))
    tracker = Tracker(arena.trials, arena.shows(images), images, arena.shows, int(data.get("budget", 1)) or 1)
    rows = tracker.pending()
    found = [records[r]["found"] or {"prompt": records[r]["prompt"]} for r in rows]
    if rows:
        tracker.report(tracker.budget, rows, _replay_images(arena, rows, found), found)
    result = AttackResult(
        attack=spec.name, concept=arena.concept, model=models.model_label(root if loaded_pipe else model), erasure=_erasure_label(erasure, loaded, guard),
        budget=tracker.budget, budget_unit=spec.budget_unit, records=tracker.records, curve=[tracker.curve()[0], tracker.curve()[-1]],
        seconds=time.time() - t0, judge=judge_label(arena.judge), config=data.get("config", {}), info={"replay_of": _source_label(source)},
    )  # fmt: skip
    save_trial_grid([result], grid)
    if out is not None:
        write_report(out, result.to_dict(), "attack")
    return result


def _replay_source(source: str | os.PathLike | dict):
    """``(report, attack spec, trial records, prompts)`` of a single attack's report, checked."""
    from erasekit.core.io import read_json

    data = source if isinstance(source, dict) else read_json(source)
    if not isinstance(data, dict) or "found" not in data or "attack" not in data:
        raise InvalidInputError(f"{source} is not a single attack's report (erasekit attack --out FILE with one attack)")
    records = data["found"]
    prompts = list(dict.fromkeys(r["prompt"] for r in records))
    if not records or len(records) % len(prompts):
        raise InvalidInputError("the report's trials do not form prompts x seeds; replay needs a report erasekit wrote")
    return data, get_attack(data["attack"]), records, prompts


def _source_label(source) -> str:
    return "report" if isinstance(source, dict) else str(source)


def _replay_images(arena: Arena, rows: list[int], found: list[dict]):
    """Images of what was found, row by row kind: typed prompts, vectors in slots, compositions."""
    import numpy as np
    import torch

    from erasekit.attacks.diffusion.arithmetic import compose_images
    from erasekit.attacks.diffusion.tokens import Slots

    images: list = [None] * len(rows)
    plain = [i for i, f in enumerate(found) if "vectors" not in f and "parts" not in f]
    if plain:
        out = arena.generate_trials([rows[i] for i in plain], [found[i]["prompt"] for i in plain])
        for j, i in enumerate(plain):
            images[i] = out[j]
    for i, f in enumerate(found):
        if "vectors" in f:
            slots = Slots([f["prompt"]], torch.tensor([f["positions"]]), [f["prompt"].split()])
            with torch.no_grad():
                cond = arena.cond(slots.texts, token_hook=slots.hook(torch.tensor(f["vectors"])[None]))
            images[i] = arena.generate(cond, [arena.trials[rows[i]].seed])[0]
        elif "parts" in f:
            parts = [(arena.cond([t]), [w]) for t, w in f["parts"]]
            images[i] = compose_images(arena, [rows[i]], parts)[0]
    return np.stack(images)


def _arena(model, loaded, concept, prompts, seeds, reference, device, dtype, steps=None, guidance=None, judge_spec=None,
           batch_size=None):  # fmt: skip
    """The arena for ``model`` with ``loaded`` applied (to a copy), and the model's root. The judge is
    the model's own (the testbed classifier), or the registered judge ``judge_spec`` names."""
    from erasekit.models.profile import profile_of

    loaded_pipe = not isinstance(model, (str, os.PathLike))
    if not loaded_pipe:
        models.check_placement(device, dtype)
    root, tj, concept = _judge_of(model, concept, judge_spec)
    pipe = model if loaded_pipe else models.load_pipeline(model, device=device, dtype=dtype)
    if loaded is not None:
        loaded.check_compatible(pipe, hint="attack it on the model it was made from")
    profile = profile_of(pipe)
    texts = trial_prompts(concept, profile.name == "testbed", prompts)
    n_seeds = seeds or max(1, math.ceil(DEFAULT_TRIALS / len(texts)))
    ref = reference_model(pipe, reference, device, dtype) or pipe
    sampling = SamplingConfig(steps=steps, guidance_scale=guidance, batch_size=batch_size or SamplingConfig.batch_size).resolved(
        pipe
    )
    arena = Arena(attacked_pipeline(pipe, loaded), ref, tj, concept, texts, n_seeds, sampling.steps, sampling.guidance_scale,
                  batch_size=sampling.batch_size, profile=profile, erasure=loaded, base=pipe)  # fmt: skip
    return arena, root
