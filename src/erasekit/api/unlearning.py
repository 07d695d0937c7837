"""Language-model unlearning: what to forget (:func:`forget_request`) and :func:`unlearn` (a causal LM
in, an :class:`~erasekit.core.erasure.Erasure` out, the model unchanged)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from pathlib import Path

from erasekit.core.errors import ConfigError, MissingFileError, UnsupportedModelError
from erasekit.core.request import ForgetRequest, QAPair
from erasekit.judges.facts import AnswerJudge
from erasekit.models.load import model_label


def fact_world_of(lm):
    """The :class:`~erasekit.testbeds.facts.factworld.FactWorld` a fact-world model was trained on
    (its profile's world), else ``None``."""
    from erasekit.models.profile import profile_of
    from erasekit.testbeds.facts.factworld import FactWorld

    profile = profile_of(lm)
    if profile.world != "fact-world":
        return None
    return FactWorld(profile.world_params["n_authors"], seed=profile.world_params["seed"])


def split_request(world, split: str) -> ForgetRequest:
    """The fact world's forget split as a request: every training question of its authors (forget)
    and of every other author (retain)."""
    forget = [QAPair(q.question, q.answer, a.name) for a in world.forget(split) for q in world.qa(a)]
    retain = [QAPair(q.question, q.answer, a.name) for a in world.retain(split) for q in world.qa(a)]
    return ForgetRequest(split, forget, retain)


def read_pairs(path: str | os.PathLike, what: str) -> list[QAPair]:
    """Question-answer pairs from a JSON list, JSON lines (TOFU's files: ``question`` / ``answer``
    fields, an optional ``subject``, other fields ignored), a CSV with ``question`` and ``answer``
    (and optionally ``subject``) columns, or a directory written by ``datasets``' ``save_to_disk``
    (TOFU from the hub: ``load_dataset("locuslab/TOFU", "forget01")["train"].save_to_disk(DIR)``;
    a saved ``DatasetDict`` of one split is read too). Nothing is downloaded."""
    path = Path(path)
    if path.is_dir():
        return _pairs_of(_dataset_rows(path, what), path)
    if not path.is_file():
        raise MissingFileError(f"{what} file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
        elif text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, csv.Error) as e:
        raise ConfigError(f"{path} is not valid JSON, JSON lines or CSV: {e}") from None
    return _pairs_of(rows, path)


def _dataset_rows(path: Path, what: str) -> list:
    """The rows of a ``datasets`` directory (``save_to_disk``), read with ``load_from_disk``."""
    if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise ConfigError(f"{what} directory {path} is not a saved dataset (no dataset_info.json or dataset_dict.json)")
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise ConfigError(
            f"reading the dataset directory {path} needs the datasets package: pip install 'erasekit[datasets]'"
        ) from None
    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        if len(data) != 1:
            raise ConfigError(f"{path} holds the splits {', '.join(data)}; pass one of them, e.g. {path / next(iter(data))}")
        data = next(iter(data.values()))
    return list(data)


def _pairs_of(rows, path: Path) -> list[QAPair]:
    """:class:`QAPair` of every row (``question``, ``answer``, optional ``subject``); a one-line error
    naming the first bad row."""
    if not isinstance(rows, list):
        raise ConfigError(f"{path} must hold a list of question-answer entries")
    pairs = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise ConfigError(f"{path}: entry {i + 1} needs text fields 'question' and 'answer'")
        for field_ in ("question", "answer"):
            if not row[field_].strip():
                raise ConfigError(f"{path}: entry {i + 1} has an empty {field_}; remove the row or fill it in")
        key = row["question"].strip()
        if key in seen:
            raise ConfigError(f"{path}: entry {i + 1} repeats the question of entry {seen[key]} ({key[:60]!r}); keep one of them")
        seen[key] = i + 1
        subject = row.get("subject") or ""
        pairs.append(QAPair(row["question"], row["answer"], subject if isinstance(subject, str) else str(subject)))
    if not pairs:
        raise ConfigError(f"{path} holds no question-answer pairs")
    return pairs


def forget_request(lm, forget: str, retain: str | None = None) -> ForgetRequest:
    """``forget``: a forget split of a fact-world model (``forget01``, ``forget05``, ``forget10``) or
    a file of pairs (:func:`read_pairs`); ``retain``: a file of pairs (default for a split: the
    split's retain authors, for a file: none)."""
    from erasekit.testbeds.facts.factworld import SPLITS

    world = fact_world_of(lm)
    if forget in SPLITS:
        if world is None:
            raise ConfigError(f"--forget {forget}: splits belong to the fact-world testbed; for this model pass --forget FILE")
        request = split_request(world, forget)
        return request if retain is None else dataclasses.replace(request, retain=read_pairs(retain, "retain"))
    pairs = read_pairs(forget, "forget")
    return ForgetRequest(Path(forget).stem, pairs, read_pairs(retain, "retain") if retain else [])


def check_tokenizable(lm, pairs: list[QAPair], where: str) -> None:
    """Every question and answer of ``pairs`` must encode to at least one token of ``lm``'s tokenizer:
    an answer of no tokens has no likelihood to lower (the loss would be NaN, blamed on the learning rate)."""
    from erasekit.models.lm_batches import pair_ids

    if not pairs:
        return
    for i, (q, a) in enumerate(zip(*pair_ids(lm.tokenizer, pairs))):
        for what, ids in (("question", q), ("answer", a)):
            if not ids:
                text = getattr(pairs[i], what)
                raise ConfigError(
                    f"{where}: entry {i + 1}'s {what} {text[:60]!r} encodes to no token of this model's tokenizer; "
                    "check that the tokenizer belongs to the model and knows the text's characters"
                )


def unlearn(lm, method: str, request: ForgetRequest | str, model: str | None = None, progress: bool = True,
            checkpoint_dir: str | os.PathLike | None = None, resume: bool = False, **params):  # fmt: skip
    """Compute an unlearning :class:`~erasekit.core.erasure.Erasure` of ``request`` with ``method`` on
    ``lm`` (a :class:`~erasekit.models.causal_lm.LanguageModel` or a model name; left unchanged).

    ``request`` is a :class:`ForgetRequest` or a forget split name. Parameters not given take the
    method's defaults, except those the model recommends for its scale (a fact-world model's
    ``testbed.json`` ``unlearning_defaults``, e.g. a larger learning rate for a 3 M-parameter model
    than the 1e-5 that suits billions); the values used are recorded in the erasure. Fine-tuning
    methods checkpoint to ``checkpoint_dir`` and continue from it when ``resume`` (only a
    checkpoint of the same run: method, config, request and base model), as :func:`erasekit.erase`.
    """
    from erasekit.api.erasing import build_erasure, checkpoint_services
    from erasekit.models.causal_lm import LanguageModel, load_lm

    if isinstance(lm, (str, os.PathLike)):
        model = str(lm) if model is None else model
        lm = load_lm(lm)
    if not isinstance(lm, LanguageModel):
        raise UnsupportedModelError(
            f"unlearning needs a LanguageModel (erasekit.testbeds.facts.load_lm), got {type(lm).__name__}"
        )
    spec = lm_method(method)
    if isinstance(request, str):
        request = forget_request(lm, request)
    check_tokenizable(lm, request.forget, f"the forget pairs of {request.name!r}")
    check_tokenizable(lm, request.retain, f"the retain pairs of {request.name!r}")
    config = spec.make_config({**recommended_params(lm, spec.config_cls), **params})
    services = checkpoint_services(spec, config, request, lm, checkpoint_dir, resume)
    t0 = time.perf_counter()
    result = spec.fn(lm, request, config, adapter=None, progress=progress, **services)
    name = str(model) if model is not None else model_label(lm.name_or_path)
    return build_erasure(lm, method, config, request, result, name, "causal-lm", time.perf_counter() - t0)


def recommended_params(lm, config_cls) -> dict:
    """The parameters a fact-world model recommends for its scale (its profile's ``recommended``,
    from ``testbed.json`` ``unlearning_defaults``) that ``config_cls`` has (never a budget); ``{}``
    for other models."""
    from erasekit.models.profile import profile_of

    return profile_of(lm).recommended_for(config_cls)


def lm_method(name: str):
    """The registered language-model method ``name``; a one-line error for an unknown or image method."""
    from erasekit.core.registry import all_methods, get_method

    spec = get_method(name)
    if "causal-lm" not in spec.families:
        raise UnsupportedModelError(
            f"method {name!r} erases from diffusion pipelines; for language models use one of: "
            + ", ".join(s.name for s in all_methods() if "causal-lm" in s.families)
        )
    return spec


def lm_inputs(model: str | os.PathLike) -> list[str]:
    """The local directory behind a language-model name (to protect from outputs), else nothing."""
    from erasekit.core.errors import ErasekitError
    from erasekit.models.causal_lm import resolve_lm

    try:
        source = resolve_lm(model)
    except ErasekitError:
        return []
    return [source] if Path(source).exists() else []


def unlearn_to(out: str | os.PathLike, model: str | os.PathLike = "testbed-llm", method: str = "npo", forget: str = "forget01",
               retain: str | None = None, checkpoints: str | os.PathLike | None = None, resume: bool = False,
               device: str | None = None, dtype: str | None = None, progress: bool = True, **params):  # fmt: skip
    """What ``erasekit erase --model <LM>`` does: check ``out``, the checkpoint directory and the
    parameters before any work, load the model, unlearn, save the erasure at ``out`` and return it.
    A fine-tuning method always checkpoints, as on pipelines (:func:`erasekit.api.erasing.erase_to`):
    into ``checkpoints``, or by default into ``OUT.checkpoints``, removed once the erasure is saved."""
    from erasekit.api.erasing import plan_checkpoints
    from erasekit.core.outputs import check_dir_output, hold_outputs
    from erasekit.models.causal_lm import load_lm

    spec = lm_method(method)
    spec.make_config(params)
    inputs = lm_inputs(model)
    out = check_dir_output(out, "erasure", inputs, what="erasure directory")
    checkpoints, default_checkpoints = plan_checkpoints(out, spec, checkpoints, resume, inputs)
    with hold_outputs(out, checkpoints):  # a second run with the same output refuses here, before any work
        lm = load_lm(model, device=device, dtype=dtype)
        request = forget_request(lm, forget, retain)
        erasure = unlearn(lm, method, request, model=str(model), progress=progress, checkpoint_dir=checkpoints,
                          resume=resume, **params)  # fmt: skip
        erasure.save(out, protect=tuple(inputs))
        if default_checkpoints:  # the run is saved: its default checkpoints are no longer needed
            from erasekit.training.checkpoints import discard

            discard(checkpoints)
    return erasure


def oracle_for(lm, split: str) -> str | None:
    """The shipped oracle of a fact-world split (``testbed-llm-oracle-<split>``) when it exists."""
    from erasekit.models import LLM_ORACLES
    from erasekit.models.causal_lm import resolve_lm

    if fact_world_of(lm) is None:
        return None
    for name, s in LLM_ORACLES.items():
        if s == split:
            try:
                resolve_lm(name)
            except MissingFileError:
                return None
            return name
    return None


def evaluate_lm(model="testbed-llm", erasure=None, split: str | None = None, oracle: str | None = None,
                out: str | os.PathLike | None = None, device: str | None = None, dtype: str | None = None,
                cache: dict | None = None) -> dict:  # fmt: skip
    """Measure an unlearning erasure on the fact world (``erasekit evaluate --model testbed-llm``):
    forget, retain, base and oracle blocks (:func:`erasekit.evaluation.lm.evaluate.evaluate_unlearning`).
    ``split`` defaults to the erasure's request; ``oracle`` to the shipped oracle of that split.
    ``cache``: a dict in which the base model's and the oracle's reports are kept between calls (a
    bench evaluates many erasures of one model)."""
    from erasekit.core.outputs import write_report
    from erasekit.evaluation.lm.evaluate import evaluate_unlearning
    from erasekit.models.causal_lm import LanguageModel, load_lm

    loaded = isinstance(model, LanguageModel)
    lm, world, erasure, split, out = _fact_world_job(model, erasure, split, out, "evaluation", device, dtype)
    oracle = oracle or oracle_for(lm, split)
    from erasekit.evaluation.lm.evaluate import model_report

    cache = {} if cache is None else cache
    t0 = time.perf_counter()
    base_key, oracle_key = ("base", lm.name_or_path, split), ("oracle", oracle, split)
    if base_key not in cache:
        cache[base_key] = model_report(lm, world, split)
    if oracle and oracle_key not in cache:
        cache[oracle_key] = model_report(load_lm(oracle, device=lm.device, dtype=lm.dtype), world, split)
    report = evaluate_unlearning(lm, world, split, erasure, base_report=cache[base_key], oracle_report=cache.get(oracle_key))
    report.update(
        model=model_label(model if not loaded else lm.name_or_path),
        judge=AnswerJudge().describe(),
        oracle_model=oracle,
        erasure=None if erasure is None else {"method": erasure.method, "params": erasure.params},
        cost=None
        if erasure is None
        else {
            "seconds": erasure.timings.get("seconds"),
            "delta_bytes": erasure.num_bytes(),
            "tensors": len(erasure.touched()),
        },  # fmt: skip
        eval_seconds=round(time.perf_counter() - t0, 1),
    )
    if out is not None:
        write_report(out, report, "evaluation", [] if loaded else lm_inputs(model))
    return report


def _fact_world_job(model, erasure, split: str | None, out, kind: str, device: str | None, dtype: str | None):
    """The checked inputs of an evaluation or attack on a fact-world model, in the order that fails
    before expensive work: the output path, the erasure (loaded), the split (default: the erasure's),
    then the model (loaded unless given) and its world -> ``(lm, world, erasure, split, out)``."""
    from erasekit.core.erasure import Erasure
    from erasekit.core.outputs import check_file_output
    from erasekit.models.causal_lm import LanguageModel, load_lm
    from erasekit.testbeds.facts.factworld import SPLITS

    loaded = isinstance(model, LanguageModel)
    if out is not None:
        out = check_file_output(out, kind, (".json",), [] if loaded else lm_inputs(model), what=f"{kind} report")
    erasure = erasure if isinstance(erasure, Erasure) or erasure is None else Erasure.load(erasure)
    split = split or (erasure.request.name if erasure is not None else None)
    if split not in SPLITS:
        raise ConfigError(
            f"{kind} measures exact answers on the fact world, so it needs a forget split ({', '.join(SPLITS)}) and got "
            f"{split!r}; pass --split, or measure an erasure of a fact-world model (testbed-llm)"
        )
    lm = model if loaded else load_lm(model, device=device, dtype=dtype)
    world = fact_world_of(lm)
    if world is None:
        raise UnsupportedModelError(f"{lm.name_or_path} is not a fact-world model; its {kind} needs the fact world's answers")
    return lm, world, erasure, split, out


def check_lm_testbed(
    out: str | os.PathLike, model: str = "testbed-llm", device: str | None = None, dtype: str | None = None
) -> dict:
    """The fact-world gate (``erasekit testbed check --llm``) written to ``out``."""
    from erasekit.core.outputs import check_file_output, write_report
    from erasekit.evaluation.lm.evaluate import run_gate
    from erasekit.models.causal_lm import load_lm

    out = check_file_output(out, "gate", (".json",), lm_inputs(model), what="gate report")
    lm = load_lm(model, device=device, dtype=dtype)
    world = fact_world_of(lm)
    if world is None:
        raise UnsupportedModelError(f"{lm.name_or_path} is not a fact-world model (no testbed.json with world: fact-world)")
    report = run_gate(lm, world, excluded=lm.testbed_info().get("excluded"))
    report["model"] = model_label(model)
    write_report(out, report, "gate", lm_inputs(model))
    return report


def attack_lm(model="testbed-llm", erasure=None, attack: str | list[str] = "fast", split: str | None = None,
              budget: int | None = None, params: dict | None = None, out: str | os.PathLike | None = None,
              device: str | None = None, dtype: str | None = None, progress: bool = True):  # fmt: skip
    """Attack a fact-world language model (with ``erasure`` applied, or itself) and report how often
    the forgotten facts come back (:mod:`erasekit.attacks.lm.arena`: the image side's ASR with
    exact answers as the judge). ``split`` defaults to the erasure's. Returns one
    :class:`~erasekit.attacks.base.AttackResult`, or a list for several attacks; writes the JSON to
    ``out`` when given."""
    from dataclasses import asdict

    from erasekit.api.attacking import attack_names, attack_results
    from erasekit.attacks.base import AttackResult
    from erasekit.attacks.lm.arena import FactArena
    from erasekit.core.registry import get_attack
    from erasekit.models.causal_lm import LanguageModel

    specs = [get_attack(n, "causal-lm") for n in attack_names(attack, family="causal-lm")]
    if params and len(specs) > 1:
        raise ConfigError("--set applies to one attack; run attacks with their own settings one at a time")
    loaded = isinstance(model, LanguageModel)
    lm, world, erasure, split, out = _fact_world_job(model, erasure, split, out, "attack", device, dtype)
    results = []
    for spec in specs:
        given = {**recommended_params(lm, spec.config_cls), **(params or {})}
        if budget is not None:
            given["budget"] = budget if len(specs) == 1 else min(budget, spec.budget_max)
        config = spec.make_config(given)
        arena = FactArena(lm, erasure, world, split)
        t0 = time.time()
        tracker = arena.tracker(config.budget, rows=arena.rows(spec.trials), progress=progress, name=spec.name)
        if config.budget > 0:  # the one attack signature: fn(arena, config, tracker, progress)
            spec.fn(arena, config, tracker, progress=progress)
        if tracker.bar is not None:
            tracker.bar.close()
        results.append(AttackResult(
            attack=spec.name, concept=split, model=model_label(lm.name_or_path if loaded else model),
            erasure=None if erasure is None else erasure.method, budget=int(config.budget), budget_unit=spec.budget_unit,
            records=tracker.records, curve=tracker.curve(), seconds=time.time() - t0, judge=AnswerJudge().describe(),
            config=asdict(config),
        ))  # fmt: skip
    return attack_results(results, out, [] if loaded else lm_inputs(model))


def export_lm(erasure_dir: str | os.PathLike, model: str, out: str | os.PathLike, force: bool = False,
              device: str | None = None, dtype: str | None = None) -> Path:  # fmt: skip
    """Apply a saved language-model erasure to ``model`` and write a complete ``transformers`` model
    directory at ``out`` (weights, tokenizer, a fact-world model's ``testbed.json``, and the erasure's
    description as ``erasure.json``). Erasures that add modules (guards, LEACE) cannot be merged into
    plain weights and are refused."""
    import shutil

    from erasekit.core.erasure import Erasure
    from erasekit.core.errors import IncompatibleErasureError
    from erasekit.core.io import atomic_path, write_json
    from erasekit.core.outputs import check_dir_output, write_manifest
    from erasekit.models.causal_lm import load_lm

    out = check_dir_output(out, "pipeline", [*lm_inputs(model), erasure_dir], what="model directory")
    erasure = Erasure.load(erasure_dir)
    if erasure.attachment is not None:
        raise IncompatibleErasureError(
            f"{erasure_dir} adds {erasure.attachment.kind} hooks to the model, which a plain transformers model cannot hold; "
            "apply it with erasekit instead: Erasure.load(dir).apply(erasekit.load_lm(...))"
        )
    lm = load_lm(model, device=device, dtype=dtype)
    erasure.apply(lm, force=force)
    with atomic_path(out) as tmp:
        lm.model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        if (Path(lm.name_or_path) / "testbed.json").is_file():  # still a fact-world model: evaluation and attacks work on it
            shutil.copyfile(Path(lm.name_or_path) / "testbed.json", Path(tmp) / "testbed.json")
        write_json(Path(tmp) / "erasure.json", erasure.metadata())
        write_manifest(tmp, "pipeline", files=True)
    return out
