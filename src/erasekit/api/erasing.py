"""Erasing: the request checks, :func:`erase` (a pipeline in, an :class:`~erasekit.core.erasure.Erasure` out) and
:func:`erase_to` (what ``erasekit erase`` does: check the output, checkpoint, erase, save)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from erasekit import models
from erasekit.core.errors import ErasekitError
from erasekit.models.profile import profile_of


def _model_name(pipe, model: str | None) -> str:
    return str(model) if model is not None else models.model_label(getattr(pipe, "name_or_path", "") or type(pipe).__name__)


def check_request_text(pipe, request) -> None:
    """Every text the request encodes (targets, synonyms, triggers, anchors, preserved concepts, each
    with its template expansions) must fit the text encoder's context: longer text would be cut off."""
    from erasekit.generation import check_prompt

    for prompt, _ in request.prompted_phrases():
        check_prompt(pipe, prompt, "concept")
    for t in request.targets:
        if t.anchor:
            for prompt in request.expand(t.anchor):
                check_prompt(pipe, prompt, "anchor")
    for prompt in request.preserve_prompts():
        check_prompt(pipe, prompt, "preserved concept")


def testbed_monitor(pipe, request, stop_at_ua: float, min_ira: float | None = None):
    """The early-stopping monitor of a testbed model: stop once UA >= ``stop_at_ua`` (and IRA >= ``min_ira``)."""
    from tqdm.auto import tqdm

    from erasekit.core.errors import ConfigError
    from erasekit.evaluation.monitor import TestbedMonitor

    judge = profile_of(pipe).classifier()
    if judge is None:
        raise ConfigError("stop_at_ua (--stop-at-ua) measures UA with the testbed judge; this model has none")
    return TestbedMonitor(pipe, judge, request.concepts, stop_ua=stop_at_ua, min_ira=min_ira, report=tqdm.write)


def checkpoint_services(spec, config, request, model, checkpoint_dir, resume: bool) -> dict:
    """The ``checkpoint_dir`` / ``resume`` keywords of a training method's call (``{}`` for a method
    that does not train; an error when one of them is given to it): the directory prepared for this
    run's identity (method, config, request and a fingerprint of ``model``'s weights)."""
    from erasekit.core.erasure import model_fingerprint
    from erasekit.core.errors import ConfigError, ErasekitError

    if not spec.trains:
        if resume or checkpoint_dir is not None:
            raise ErasekitError(f"method {spec.name!r} does not train, so it has no checkpoints to write or resume")
        return {}
    if checkpoint_dir is not None:
        from erasekit.training import checkpoints

        identity = checkpoints.run_identity(spec.name, config, request, model_fingerprint(model))
        checkpoint_dir = checkpoints.prepare(checkpoint_dir, identity, resume)
    elif resume:
        raise ConfigError("resume needs a checkpoint directory (--checkpoints DIR) to continue from")
    return {"checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir), "resume": resume}


def plan_checkpoints(out: Path, spec, checkpoints, resume: bool, inputs) -> tuple[Path | None, bool]:
    """Where a job writing ``out`` with method ``spec`` checkpoints, checked before any work, and
    whether that is the default ``OUT.checkpoints`` (removed once the result is saved): a training
    method always checkpoints; a method that does not train refuses ``checkpoints`` and ``resume``;
    ``resume`` needs a checkpoint to resume."""
    from erasekit.core.errors import ConfigError, OutputPathError
    from erasekit.core.outputs import check_dir_output

    if resume and not spec.trains:
        raise ConfigError(f"method {spec.name!r} does not train, so it has no checkpoints to resume (drop --resume)")
    default = spec.trains and checkpoints is None
    if default:
        checkpoints = out.with_name(out.name + ".checkpoints")
    if checkpoints is None:
        return None, False
    if not spec.trains:
        raise ConfigError(f"method {spec.name!r} does not train, so it has no checkpoints (drop --checkpoints)")
    checkpoints = check_dir_output(checkpoints, "checkpoints", inputs, what="checkpoint directory")
    if checkpoints == out or out in checkpoints.parents or checkpoints in out.parents:
        raise OutputPathError(f"the checkpoint directory {checkpoints} and the output {out} must not contain each other")
    if resume:  # before the model loads
        from erasekit.training.checkpoints import check_resumable

        check_resumable(checkpoints)
    return checkpoints, default


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
    stop_at_ua: float | None = None,
    min_ira: float | None = None,
    **params,
):
    """Compute an erasure of ``request`` with ``method`` on ``pipe`` (left unchanged) -> :class:`Erasure`.

    ``pipe`` is a loaded diffusers pipeline or a model name for :func:`load_pipeline`; ``request`` an
    :class:`~erasekit.core.request.ErasureRequest`, a mapping (``{"targets": ["star"]}``) or a concept
    name; ``params`` the method's parameters (``lamb=0.5``). Methods that validate (RECE) get
    ``judge`` (default on a testbed model: the testbed classifier). Training methods write periodic
    checkpoints to ``checkpoint_dir`` and continue from them when ``resume`` (only a checkpoint of the
    same run: method, config, request and base model); those that accept a ``monitor(step, weights) ->
    (metrics, stop)`` get it. ``stop_at_ua`` (and ``min_ira``) builds the testbed monitor that stops
    training once the judge sees the concept erased. A result holding NaN or infinity is an error,
    never an erasure.

    ``pipe`` may also be a language model (a :class:`~erasekit.models.causal_lm.LanguageModel` or
    its name): then ``request`` is a :class:`~erasekit.core.request.ForgetRequest` or a forget split
    and the job is :func:`erasekit.api.unlearning.unlearn` (``judge``, ``monitor`` and ``stop_at_ua``
    are refused there).
    """
    from erasekit.core.errors import ConfigError, ErasekitError, UnsupportedModelError
    from erasekit.core.registry import get_method
    from erasekit.core.request import ErasureRequest
    from erasekit.models.diffusion import get_adapter

    if models.kind_of_any(pipe) == models.CAUSAL_LM:
        from erasekit.api.unlearning import unlearn

        models.refuse_options(models.CAUSAL_LM, "the model", judge=judge, monitor=monitor, stop_at_ua=stop_at_ua, min_ira=min_ira)
        return unlearn(pipe, method, request, model=model, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume,
                       **params)  # fmt: skip
    if isinstance(request, str):
        request = ErasureRequest.from_dict({"targets": [request]})
    elif isinstance(request, dict):
        request = ErasureRequest.from_dict(request)
    elif not isinstance(request, ErasureRequest):
        raise ConfigError(f"request must be an ErasureRequest, a mapping or a concept name, got {type(request).__name__}")
    spec = get_method(method)
    config = spec.make_config(params)
    if isinstance(pipe, (str, os.PathLike)):
        model = str(pipe) if model is None else model
        pipe = models.load_pipeline(pipe)
    adapter = get_adapter(pipe)
    if adapter.name not in spec.families:
        why = (
            "; its sampler is guidance-distilled, with no unconditional branch for a guard to act on"
            if spec.kind == "guard" and adapter.name == "flux"
            else ""
        )
        raise UnsupportedModelError(
            f"method {method!r} does not support the {adapter.name} family (it supports: {', '.join(spec.families)}){why}"
        )
    profile = profile_of(pipe)  # what the model's world offers (the testbed's triggers, vocabulary, judge, masks)
    request = profile.with_implicit(request)
    profile.check_vocabulary(request)
    check_request_text(pipe, request)
    extra: dict = {"profile": profile} if "profile" in spec.accepts else {}
    if "judge" in spec.accepts:
        if judge is None:
            from erasekit.judges.testbed import TestbedJudge

            classifier = profile.classifier()
            judge = TestbedJudge(classifier) if classifier is not None else None
        extra["judge"] = judge
    extra.update(checkpoint_services(spec, config, request, pipe, checkpoint_dir, resume))
    if stop_at_ua is not None:
        if monitor is not None:
            raise ConfigError("pass either a monitor or stop_at_ua, not both")
        if "monitor" not in spec.accepts:
            raise ErasekitError(
                f"method {method!r} does not accept a training monitor (--stop-at-ua needs a method that trains weights)"
            )
        monitor = testbed_monitor(pipe, request, stop_at_ua, min_ira)
    elif min_ira is not None:
        raise ConfigError("min_ira (--min-ira) only applies together with stop_at_ua (--stop-at-ua)")
    if monitor is not None:
        if "monitor" not in spec.accepts:
            raise ErasekitError(f"method {method!r} does not accept a training monitor")
        extra["monitor"] = monitor
    t0 = time.perf_counter()
    result = spec.fn(pipe, request, config, adapter=adapter, progress=progress, **extra)
    return build_erasure(pipe, method, config, request, result, _model_name(pipe, model), adapter.name, time.perf_counter() - t0)


def stack_parts(name: str) -> list[str]:
    """The methods of a bench entry ``name``: one method, or a method with guards stacked on it
    (``uce+sld``: UCE's erasure with the SLD guard); each registered, every part after the first a guard."""
    from erasekit.core.errors import ConfigError
    from erasekit.core.registry import get_method

    first, *guards = name.split("+")
    get_method(first)
    for g in guards:
        if get_method(g).kind != "guard":
            raise ConfigError(f"--methods {name}: only guards stack after '+' ({g} is a {get_method(g).kind} method)")
    return [first, *guards]


def erase_stacked(pipe, name: str, request, params: dict[str, dict], judge=None, **kw):
    """The erasure of the bench entry ``name`` (:func:`stack_parts`): each part erased with its own
    ``params[part]`` (``judge`` goes to the parts that take one, as :func:`erase` serves it), the
    guards stacked on the first (:meth:`~erasekit.core.erasure.Erasure.with_guard`)."""
    erasure = None
    for part in stack_parts(name):
        made = erase(pipe, part, request, judge=judge, **kw, **params.get(part, {}))
        erasure = made if erasure is None else erasure.with_guard(made)
    return erasure


def build_erasure(pipe, method: str, config, request, result, base_model: str, family: str, seconds: float):
    """The :class:`~erasekit.core.erasure.Erasure` of a method's result on ``pipe`` (a pipeline or a
    :class:`~erasekit.models.causal_lm.LanguageModel`): new values cast to the model's dtype, only the tensors
    that really changed, the hash of their originals. Refused: NaN or infinity anywhere, and a
    result that changes nothing (a silent no-op)."""
    from erasekit import __version__
    from erasekit.core.erasure import Erasure, check_finite, get_tensor, hash_tensors, lora_deltas
    from erasekit.core.errors import ErasekitError

    check_finite(result.weights, f"{method} produced a broken erasure")
    check_finite(result.lora, f"{method} produced a broken LoRA")
    if result.attachment is not None:
        check_finite(result.attachment.tensors(), f"{method} produced a broken attachment")
    originals = {k: get_tensor(pipe, k).detach() for k in result.weights}
    # new values in the model's own dtype (a float32 student of a half-precision model is cast back)
    cast = {k: v.detach().to(originals[k].device, originals[k].dtype) for k, v in result.weights.items()}
    check_finite(
        cast, f"{method}'s erasure overflows the model's {next(iter(originals.values())).dtype if originals else 'dtype'}"
    )
    check_cast_keeps_update(method, result.weights, cast, originals)
    changed = {k: v.to("cpu").contiguous() for k, v in cast.items() if not torch.equal(v, originals[k])}
    deltas = lora_deltas(result.lora)
    if not changed and not any(bool(d.any()) for d in deltas.values()) and result.attachment is None:
        raise ErasekitError(
            f"method {method!r} changed no weight for this request (a silent no-op); check the request and parameters"
        )
    originals.update({k: get_tensor(pipe, k).detach() for k in deltas})
    return Erasure(
        method=method,
        params=json.loads(json.dumps(dataclasses.asdict(config))),  # as stored (tuples become lists)
        request=request,
        base_model=base_model,
        base_hash=hash_tensors({k: originals[k] for k in sorted(set(changed) | set(deltas))}),
        weights=changed,
        family=family,
        timings={"seconds": round(seconds, 4)},
        info=result.info,
        version=__version__,
        lora=result.lora,
        attachment=result.attachment,
    )


#: The least share of a trained update that the cast to a half-precision model must keep.
MIN_UPDATE_KEPT = 0.5


def update_kept(trained: dict[str, torch.Tensor], cast: dict[str, torch.Tensor], originals: dict[str, torch.Tensor]) -> float:
    """The share of the update ``u = trained − original`` that survives the cast to the model's dtype:
    the projection ``⟨cast − original, u⟩ / ‖u‖²`` over every tensor together, in float32 (1 when
    nothing rounds away, 0 when the cast restores the original; 1 when nothing was trained)."""
    dot = norm = 0.0
    for k, new in trained.items():
        old = originals[k].float()
        u = new.detach().to(old.device).float() - old
        dot += float((u * (cast[k].float() - old)).sum())
        norm += float(u.pow(2).sum())
    return dot / norm if norm > 0 else 1.0


def check_cast_keeps_update(method: str, trained: dict, cast: dict, originals: dict) -> None:
    """Refuse a float32 update of a half-precision model that its cast mostly rounds away (a partial
    silent no-op: the erasure would keep too little of what was trained, e.g. at lr 1e-5 on
    bfloat16), naming the share kept and what to do."""
    half = {v.dtype for v in originals.values()} & {torch.float16, torch.bfloat16}
    if not half or not trained:
        return
    kept = update_kept(trained, cast, originals)
    if kept < MIN_UPDATE_KEPT:
        dtype = str(next(iter(half))).replace("torch.", "")
        raise ErasekitError(
            f"method {method!r}: the cast to {dtype} keeps only {kept:.0%} of the trained update (below "
            f"{MIN_UPDATE_KEPT:.0%}); load the model in float32 (--dtype float32) or raise the learning rate"
        )


def erase_to(
    out: str | os.PathLike,
    model: str | os.PathLike = "testbed",
    method: str | None = None,
    request=None,
    checkpoints: str | os.PathLike | None = None,
    resume: bool = False,
    stop_at_ua: float | None = None,
    min_ira: float | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
    forget: str | None = None,
    retain: str | os.PathLike | None = None,
    **params,
):
    """What ``erasekit erase`` does, on either kind of model: check ``out`` (and the checkpoint
    directory) before any work, load ``model``, erase, save the erasure at ``out`` and return it.

    On an image pipeline ``request`` says what to erase (``method`` default ``uce``); on a language
    model ``forget`` (a split of testbed-llm or a file of question-answer pairs) and ``retain`` do
    (``method`` default ``npo``, :func:`erasekit.api.unlearning.unlearn_to`). An argument of the other
    kind is refused, never ignored. A training method always checkpoints: into ``checkpoints``, or by
    default into ``OUT.checkpoints``, which is removed once the erasure is saved (a named directory
    is kept).
    """
    kind = models.model_kind(model, hub=forget is not None)
    if kind == models.CAUSAL_LM:
        from erasekit.api.unlearning import unlearn_to
        from erasekit.core.errors import ConfigError

        models.refuse_options(kind, repr(str(model)), request=request, stop_at_ua=stop_at_ua, min_ira=min_ira)
        if forget is None:
            raise ConfigError("nothing to unlearn: pass --forget forget01 (a testbed-llm split) or --forget FILE.json")
        return unlearn_to(out, model, method or "npo", forget, None if retain is None else str(retain), checkpoints=checkpoints,
                          resume=resume, device=device, dtype=dtype, progress=progress, **params)  # fmt: skip
    models.refuse_options(kind, repr(str(model)), forget=forget, retain=retain)
    method = method or "uce"
    from erasekit.api.commands import model_inputs
    from erasekit.core.errors import ConfigError
    from erasekit.core.outputs import check_dir_output, hold_outputs
    from erasekit.core.registry import get_method

    spec = get_method(method)
    spec.make_config(params)  # bad numbers fail here, before the model loads
    if stop_at_ua is not None and "monitor" not in spec.accepts:
        raise ConfigError(f"method {method!r} does not train with a monitor, so --stop-at-ua cannot stop it (drop --stop-at-ua)")
    if request is None:
        raise ConfigError("nothing to erase: pass --concept NAME (repeatable) or --request FILE.yaml")
    inputs = model_inputs(model)
    out = check_dir_output(out, "erasure", inputs, what="erasure directory")
    checkpoints, default_checkpoints = plan_checkpoints(out, spec, checkpoints, resume, inputs)
    if stop_at_ua is None and min_ira is not None:
        raise ConfigError("min_ira (--min-ira) only applies together with stop_at_ua (--stop-at-ua)")
    models.check_placement(device, dtype)
    with hold_outputs(out, checkpoints):  # a second run with the same output refuses here, before any work
        pipe = models.load_pipeline(model, device=device, dtype=dtype)
        result = erase(pipe, method, request, model=str(model), progress=progress, checkpoint_dir=checkpoints,
                       resume=resume, stop_at_ua=stop_at_ua, min_ira=min_ira, **params)  # fmt: skip
        result.save(out, protect=tuple(inputs))
        if default_checkpoints:  # the run is saved: its default checkpoints are no longer needed
            from erasekit.training.checkpoints import discard

            discard(checkpoints)
    return result
