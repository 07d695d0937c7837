"""The commands that take paths: generate a grid, check the testbed gate, export a pipeline, evaluate."""

from __future__ import annotations

import os
from pathlib import Path

from .. import models
from ..core.errors import InvalidInputError, MissingFileError
from ..core.outputs import IMAGE_SUFFIXES, check_dir_output, check_file_output, write_report
from ..generation import SamplingConfig, generate, make_grid, save_image, warn_unknown_words
from .judges import describe_labels, load_judge, model_judge


def model_inputs(model: str | os.PathLike) -> list[str]:
    """The local directory behind ``model`` (to protect from outputs), or nothing for a hub id (or a
    name that resolves to nothing: loading it reports that)."""
    from ..core.errors import ErasekitError

    try:
        source = models.resolve_model(model)
    except ErasekitError:
        return []
    return [source] if Path(source).exists() else []


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
    dtype: str | None = None,
) -> Path:
    """Generate ``n`` images of ``prompt`` (seeds ``seed..seed+n-1``) and save a grid at ``out``."""
    if n < 1:
        raise InvalidInputError(f"-n must be at least 1, got {n}")
    sampling = SamplingConfig(steps=steps, guidance_scale=guidance, negative_prompt=negative_prompt)
    sampling.validate()
    out = check_file_output(
        out, "image", IMAGE_SUFFIXES, model_inputs(model), what="image grid"
    )  # fail fast, before anything heavy
    models.check_placement(device, dtype)
    pipe = models.load_pipeline(model, device=device, dtype=dtype)
    judge = load_judge(model) if labels else None
    if judge is not None:
        from ..testbed.world import vocabulary

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
    dtype: str | None = None,
    progress: bool = True,
) -> dict:
    """Run the quality gate on ``model`` and write the JSON report to ``out``."""
    from ..testbed.gate import run_gate

    if seeds < 1:
        raise InvalidInputError(f"seeds must be at least 1, got {seeds}")
    out = check_file_output(out, "gate", (".json",), model_inputs(model), what="gate report")
    models.check_placement(device, dtype)
    judge = load_judge(model, classifier) if classifier is not None else None
    judge = judge or load_judge(model)
    if judge is None:
        raise MissingFileError(f"no testbed classifier found for {model!r}; pass --classifier PATH")
    pipe = models.load_pipeline(model, device=device, dtype=dtype)
    from ..profiles import profile_of

    report = run_gate(
        pipe,
        judge,
        seeds=seeds,
        sampling=SamplingConfig(steps=steps, guidance_scale=guidance),
        progress=progress,
        excluded=profile_of(pipe).excluded,
    )  # fmt: skip  (an oracle: gated without its concepts)
    report["model"] = str(model)
    write_report(out, report, "gate")
    return report


def export_pipeline(
    erasure_dir: str | os.PathLike,
    model: str,
    out: str | os.PathLike,
    force: bool = False,
    device: str | None = None,
    dtype: str | None = None,
) -> Path:
    """Apply a saved erasure to ``model`` and write a complete diffusers pipeline directory at ``out``."""
    import shutil

    from ..core.erasure import Erasure
    from ..core.errors import IncompatibleErasureError
    from ..core.io import atomic_path, write_json
    from ..core.outputs import write_manifest

    out = check_dir_output(out, "pipeline", [*model_inputs(model), erasure_dir], what="pipeline directory")
    models.check_placement(device, dtype)
    erasure = Erasure.load(erasure_dir)
    if erasure.attachment is not None:
        raise IncompatibleErasureError(
            f"{erasure_dir} adds {erasure.attachment.kind} modules to the model, which a plain diffusers pipeline cannot hold; "
            "apply it with erasekit instead: Erasure.load(dir).apply(pipe)"
        )
    source = Path(models.resolve_model(model))
    pipe = models.load_pipeline(model, device=device, dtype=dtype)
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
    model="testbed",
    erasure=None,
    concepts: list[str] | None = None,
    out: str | os.PathLike | None = None,
    seeds: int = 4,
    contexts: int = 12,
    steps: int | None = None,
    guidance: float | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
) -> dict:
    """Measure erasure (UA), retention (IRA, CRA), fidelity and cost on the testbed, before and after.

    ``model``: a model name or directory, or a loaded testbed pipeline (left unchanged: the erasure is
    applied and removed around its images); ``erasure``: an :class:`~erasekit.core.erasure.Erasure`
    or its directory (omit it to measure the base model on ``concepts``); ``out``: where to write the
    JSON report (optional). Returns the report.
    """
    from ..core.erasure import Erasure
    from ..core.errors import ConfigError
    from ..evaluation import evaluate_on_testbed
    from ..evaluation.prompts import resolve_concept

    if seeds < 1 or contexts < 1:
        raise InvalidInputError("seeds and contexts must be at least 1")
    loaded_pipe = not isinstance(model, (str, os.PathLike))
    if out is not None:
        out = check_file_output(
            out, "evaluation", (".json",), [] if loaded_pipe else model_inputs(model), what="evaluation report"
        )
    if not loaded_pipe:
        models.check_placement(device, dtype)
    loaded = erasure if isinstance(erasure, Erasure) or erasure is None else Erasure.load(erasure)
    targets = list(concepts or (loaded.request.concepts if loaded else []))
    if not targets:
        raise ConfigError("nothing to evaluate: pass --erasure DIR, or --concept NAME to measure the base model")
    for t in targets:
        resolve_concept(t)
    root, judge = model_judge(model, "evaluation")
    pipe = model if loaded_pipe else models.load_pipeline(model, device=device, dtype=dtype)
    if loaded is not None:  # before any image is generated
        loaded.check_compatible(pipe, hint="evaluate it on the model it was made from")
    report = evaluate_on_testbed(
        pipe, judge, targets, erasure=loaded, seeds=seeds, n_contexts=contexts,
        sampling=SamplingConfig(steps=steps, guidance_scale=guidance), progress=progress,
    )  # fmt: skip
    report["model"] = str(root if loaded_pipe else model)
    report["erasure"] = (
        None if erasure is None else (f"{loaded.method} erasure (in memory)" if isinstance(erasure, Erasure) else str(erasure))
    )
    if out is not None:
        write_report(out, report, "evaluation")
    return report
