"""``erasekit attack``: run registered attacks against a model (with or without an erasure) and
report their attack success rates (see :mod:`erasekit.attacks.base` for the one ASR definition)."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

from .. import models
from ..attacks.arena import Arena
from ..attacks.base import AttackResult, Tracker
from ..core.errors import ConfigError, InvalidInputError
from ..core.outputs import check_file_output, write_report
from ..core.registry import AttackSpec, all_attacks, get_attack
from ..generation import SamplingConfig
from .judges import load_judge

#: Trials per attack when ``seeds`` is not given: seeds are chosen so prompts x seeds reaches this.
DEFAULT_TRIALS = 24
JUDGE_NAME = "testbed classifier (classifier.safetensors; shows = the concept's label, all attributes for a character)"


def attack_names(names: str | list[str]) -> list[str]:
    """``"all"``, ``"fast"``, one name or a comma-separated list of names, checked against the registry."""
    items = names.split(",") if isinstance(names, str) else list(names)
    items = [n.strip() for n in items if n.strip()]
    if not items:
        raise ConfigError("no attack named: pass --attack NAME, a comma-separated list, 'fast' or 'all' (see 'erasekit attacks')")
    out: list[str] = []
    for n in items:
        if n == "all":
            out += [a.name for a in all_attacks()]
        elif n == "fast":
            out += [a.name for a in all_attacks() if a.fast]
        else:
            out.append(get_attack(n).name)
    return list(dict.fromkeys(out))


def attacked_pipeline(pipe, erasure):
    """A pipeline sharing ``pipe``'s unchanged components, with the erasure applied to copies of the
    ones it changes (the user's pipeline is never modified)."""
    if erasure is None:
        return pipe
    from ..families import get_adapter

    adapter = get_adapter(pipe)
    names = {k.split(".", 1)[0] for k in erasure.touched()}
    if erasure.attachment is not None:
        names |= set(adapter.trainable_components(pipe))
    clone = copy.copy(pipe)
    for name in sorted(names):
        setattr(clone, name, copy.deepcopy(getattr(pipe, name)))
    erasure.applied(clone)  # stays applied: the clone exists only for this attack
    return clone


def trial_prompts(concept: str, testbed: bool, prompts: list[str] | None) -> list[str]:
    """The prompts that name (or trigger) ``concept``: the evaluation's target prompts on a testbed,
    else the user's."""
    if prompts:
        return list(dict.fromkeys(prompts))
    if not testbed:
        raise ConfigError(f"attacking {concept!r} on this model needs the prompts that show it: pass --prompt (repeatable)")
    from ..evaluation.prompts import prompt_set

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
    root = getattr(pipe, "name_or_path", None)
    meta = Path(root) / "testbed.json" if root else None
    if meta is not None and meta.is_file():
        named = json.loads(meta.read_text()).get("reference")
        if named:
            return models.load_pipeline(named, device=device, dtype=dtype)
    return None


def run_attack(spec: AttackSpec, arena: Arena, config, progress: bool = True, before=None) -> AttackResult:
    """Run one attack in ``arena``: judge the plain prompts, let the attack spend its budget, and
    collect the result. ``before``: the plain prompts' ``(images, shown)`` if already known."""
    t0 = time.time()
    if before is None:
        images = arena.generate_trials(list(range(len(arena.trials))))
        before = (images, arena.shows(images))
    tracker = Tracker(arena.trials, before[1], before[0], arena.shows, config.budget)
    info = spec.fn(arena, config, tracker, progress=progress) if config.budget > 0 else None
    from dataclasses import asdict

    return AttackResult(
        attack=spec.name, concept=arena.concept, model="", erasure=None, budget=int(config.budget),
        budget_unit=spec.budget_unit, records=tracker.records, curve=tracker.curve(), seconds=time.time() - t0,
        judge=JUDGE_NAME, config=asdict(config), info=dict(info or {}),
    )  # fmt: skip


def attack(
    model="testbed",
    erasure=None,
    attack: str | list[str] = "synonyms",
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
) -> AttackResult | list[AttackResult]:
    """Attack ``model`` (a name, directory or loaded pipeline) with ``erasure`` applied (an Erasure,
    its directory, or None for the model itself) and report whether ``concept`` comes back.

    ``attack``: a registered name, a list, ``"fast"`` or ``"all"``; ``budget`` overrides the
    attack's default budget and ``params`` its other settings (``{"lr": 0.01}``); ``seeds``: seeds
    per prompt (default: enough for about 24 trials); ``prompts``: the prompts that show the concept
    (default on a testbed: the evaluation's target prompts); ``reference``: the model that draws the
    concept (default: ``model`` without the erasure, or the testbed for an oracle). Writes the JSON
    to ``out`` when given. Returns one :class:`AttackResult`, or a list for several attacks.
    """
    from ..core.erasure import Erasure
    from ..profiles import profile_of

    names = attack_names(attack)
    if budget is not None and budget < 0:
        raise InvalidInputError(f"--budget must be >= 0, got {budget}")
    if seeds is not None and seeds < 1:
        raise InvalidInputError(f"--seeds must be >= 1, got {seeds}")
    specs = [get_attack(n) for n in names]
    configs = [s.make_config({**(params or {}), **({"budget": budget} if budget is not None else {})}) if len(specs) == 1
               else s.make_config({"budget": budget} if budget is not None else {}) for s in specs]  # fmt: skip
    if params and len(specs) > 1:
        raise ConfigError("--set applies to one attack; run attacks with their own settings one at a time")
    loaded_pipe = not isinstance(model, (str, os.PathLike))
    if out is not None:
        out = check_file_output(out, "attack", (".json",), [] if loaded_pipe else _inputs(model, erasure), what="attack report")
    if not loaded_pipe:
        models.check_placement(device, dtype)
    loaded = erasure if isinstance(erasure, Erasure) or erasure is None else Erasure.load(erasure)
    if concept is None:
        if loaded is None or not loaded.request.concepts:
            raise ConfigError("nothing to attack: pass --concept NAME (or an --erasure whose request names one)")
        concept = loaded.request.concepts[0]
    root = getattr(model, "name_or_path", None) if loaded_pipe else models.resolve_model(model)
    judge = load_judge(root) if root and Path(str(root)).is_dir() else None
    if judge is None:
        raise ConfigError(f"attacks need a judge; {root or model!r} has none (only testbed models have one so far)")
    from ..evaluation.judges import TestbedJudge

    tj = TestbedJudge(judge)
    if not tj.knows(concept):
        raise ConfigError(f"the judge cannot tell {concept!r}: attack a concept of the testbed world (see docs/testbed.md)")
    concept = _canonical(concept)
    pipe = model if loaded_pipe else models.load_pipeline(model, device=device, dtype=dtype)
    if loaded is not None:
        loaded.check_compatible(pipe, hint="attack it on the model it was made from")
    profile = profile_of(pipe)
    trial_texts = trial_prompts(concept, profile.name == "testbed", prompts)
    n_seeds = seeds or max(1, math.ceil(DEFAULT_TRIALS / len(trial_texts)))
    ref = reference_model(pipe, reference, device, dtype) or pipe
    attacked = attacked_pipeline(pipe, loaded)
    sampling = SamplingConfig(steps=steps, guidance_scale=guidance).resolved(pipe)
    arena = Arena(attacked, ref, tj, concept, trial_texts, n_seeds, sampling.steps, sampling.guidance_scale,
                  batch_size=sampling.batch_size, profile=profile)  # fmt: skip
    images = arena.generate_trials(list(range(len(arena.trials))))
    before = (images, arena.shows(images))
    results = []
    for spec, config in zip(specs, configs):
        result = run_attack(spec, arena, config, progress=progress, before=before)
        result.model = str(root if loaded_pipe else model)
        result.erasure = (
            None
            if erasure is None
            else (f"{loaded.method} erasure (in memory)" if isinstance(erasure, Erasure) else str(erasure))
        )
        results.append(result)
    if out is not None:
        data = results[0].to_dict() if len(results) == 1 else {"attacks": [r.to_dict() for r in results]}
        write_report(out, data, "attack")
    return results[0] if len(results) == 1 else results


def _canonical(concept: str) -> str:
    from ..evaluation.prompts import resolve_concept

    return resolve_concept(concept)[0]


def _inputs(model, erasure) -> list[str]:
    from .commands import model_inputs

    return model_inputs(model) + ([str(erasure)] if isinstance(erasure, (str, os.PathLike)) else [])
