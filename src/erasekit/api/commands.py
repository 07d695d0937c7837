"""The commands that take paths: generate a grid, check the testbed gate, export a pipeline, evaluate."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from erasekit import models
from erasekit.api.judges import describe_labels, load_judge, model_judge
from erasekit.core import parallel
from erasekit.core.errors import InvalidInputError, MissingFileError
from erasekit.core.outputs import IMAGE_SUFFIXES, check_dir_output, check_file_output, write_report
from erasekit.evaluation.prompt_sets import PromptFiles
from erasekit.generation import SamplingConfig, generate, make_grid, save_image, warn_unknown_words


def model_inputs(model: str | os.PathLike) -> list[str]:
    """The local directory behind ``model`` (to protect from outputs), or nothing for a hub id (or a
    name that resolves to nothing: loading it reports that)."""
    from erasekit.core.errors import ErasekitError

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
    erasure=None,
    guard=None,
) -> Path:
    """Generate ``n`` images of ``prompt`` (seeds ``seed..seed+n-1``) and save a grid at ``out``;
    ``erasure`` (an erasure or its directory) and ``guard`` (a guard erasure, stacked on it or alone)
    are applied for the images and taken off again."""
    from erasekit.core.erasure import stacked

    if n < 1:
        raise InvalidInputError(f"-n must be at least 1, got {n}")
    sampling = SamplingConfig(steps=steps, guidance_scale=guidance, negative_prompt=negative_prompt)
    sampling.validate()
    inputs = model_inputs(model) + [str(p) for p in (erasure, guard) if isinstance(p, (str, os.PathLike))]
    out = check_file_output(out, "image", IMAGE_SUFFIXES, inputs, what="image grid")  # fail fast, before anything heavy
    applied = stacked(erasure, guard)
    models.check_placement(device, dtype)
    pipe = models.load_pipeline(model, device=device, dtype=dtype)
    if applied is not None:
        applied.check_compatible(pipe, hint="generate with the model it was made from")
    judge = load_judge(model) if labels else None
    if judge is not None:
        from erasekit.testbeds.image.world import vocabulary

        warn_unknown_words(prompt, set(vocabulary()))
    with applied.applied(pipe) if applied is not None else contextlib.nullcontext():
        images = generate(pipe, [prompt] * n, list(range(seed, seed + n)), sampling)
    captions = None
    if judge is not None:
        pred = judge.predict(images)
        captions = [describe_labels(pred, i) for i in range(n)]
    return save_image(make_grid(images, captions), out)


def check_testbed(
    out: str | os.PathLike,
    model: str = "testbed",
    seeds: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    classifier: str | os.PathLike | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
) -> dict:
    """Run the quality gate on ``model`` and write the JSON report to ``out``: the image testbed's
    (``seeds`` per prompt, default 8, judged by ``classifier``, default the model's own) or, for a
    language model, the fact world's (:func:`erasekit.api.unlearning.check_lm_testbed`)."""
    from erasekit.testbeds.image.gate import run_gate

    kind = models.model_kind(model)
    if kind == models.CAUSAL_LM:
        from erasekit.api.unlearning import check_lm_testbed

        models.refuse_options(kind, repr(str(model)), seeds=seeds, steps=steps, guidance=guidance, classifier=classifier)
        return check_lm_testbed(out, model=model, device=device, dtype=dtype)
    seeds = 8 if seeds is None else seeds
    if seeds < 1:
        raise InvalidInputError(f"seeds must be at least 1, got {seeds}")
    out = check_file_output(out, "gate", (".json",), model_inputs(model), what="gate report")
    models.check_placement(device, dtype)
    judge = load_judge(model, classifier) if classifier is not None else None
    judge = judge or load_judge(model)
    if judge is None:
        raise MissingFileError(f"no testbed classifier found for {model!r}; pass --classifier PATH")
    pipe = models.load_pipeline(model, device=device, dtype=dtype)
    from erasekit.models.profile import profile_of

    report = run_gate(
        pipe,
        judge,
        seeds=seeds,
        sampling=SamplingConfig(steps=steps, guidance_scale=guidance),
        progress=progress,
        excluded=profile_of(pipe).excluded,
    )  # fmt: skip  (an oracle: gated without its concepts)
    report["model"] = models.model_label(model)
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
    """Apply a saved erasure to ``model`` and write a complete diffusers pipeline directory at ``out``
    (for a language model, a complete transformers model directory:
    :func:`erasekit.api.unlearning.export_lm`)."""
    import shutil

    if models.model_kind(model) == models.CAUSAL_LM:
        from erasekit.api.unlearning import export_lm

        return export_lm(erasure_dir, model, out, force=force, device=device, dtype=dtype)

    from erasekit.core.erasure import Erasure
    from erasekit.core.errors import IncompatibleErasureError
    from erasekit.core.io import atomic_path, write_json
    from erasekit.core.outputs import write_manifest

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
    seeds: int | None = None,
    contexts: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
    split: str | None = None,
    oracle: str | None = None,
    judge: str | None = None,
    prompts: str | os.PathLike | None = None,
    retain_prompts: str | os.PathLike | None = None,
    limit: int | None = None,
    where: list[str] | None = None,
    samples: int | None = None,
    fidelity: str | None = None,
    cache: str | os.PathLike | None = None,
    guard=None,
    batch_size: int | None = None,
) -> dict:
    """Measure erasure (UA), retention (IRA, CRA), fidelity and cost on the testbed, before and after
    (on a fact-world language model: forget, retain, forget quality, utility and privacy leak against
    the ``oracle`` of ``split``, :func:`erasekit.api.unlearning.evaluate_lm`).

    ``model``: a model name or directory, or a loaded testbed model (left unchanged: the erasure is
    applied and removed around its images); ``erasure``: an :class:`~erasekit.core.erasure.Erasure`
    or its directory (omit it to measure the base model on ``concepts``); ``seeds`` (default 4) and
    ``contexts`` (default 12) per concept; ``out``: where to write the JSON report (optional). An
    argument of the other kind of model is refused. Returns the report.

    On any pipeline, with a prompt file: ``prompts`` (the target prompts, :mod:`~erasekit.evaluation.prompt_sets`;
    ``limit`` and ``where`` select rows), a registered ``judge`` (``NAME[:k=v,...]``, e.g. ``nudenet``;
    default on a testbed: ``testbed``), ``retain_prompts`` for fidelity (``fidelity``: a CLIPScore
    judge for CLIP score and FD), ``samples`` images per row (default 1), ``cache`` a directory
    that keeps every drawn image (a rerun draws only what is missing):
    :func:`erasekit.evaluation.judged.evaluate_with_judge`.

    ``guard``: a guard (an erasure of kind guard, or its directory; ``erasekit erase --method sld``)
    stacked on ``erasure`` (:meth:`~erasekit.core.erasure.Erasure.with_guard`), or measured alone.
    ``batch_size``: images drawn per batch (default 128; lower it for large models on a GPU).

    Under torchrun / accelerate launch the images are drawn in shards, batch ``k`` by rank ``k mod
    N``, and the report is the one-process report (:mod:`erasekit.core.parallel`).
    """
    if guard is not None:
        return _evaluate_guarded(model, erasure, guard, out, concepts=concepts, seeds=seeds, contexts=contexts, steps=steps,
                                 guidance=guidance, device=device, dtype=dtype, progress=progress, split=split, oracle=oracle,
                                 judge=judge, prompts=prompts, retain_prompts=retain_prompts, limit=limit, where=where,
                                 samples=samples, fidelity=fidelity, cache=cache, batch_size=batch_size)  # fmt: skip
    kind = models.kind_of_any(model)
    subject = repr(str(model)) if isinstance(model, (str, os.PathLike)) else "the model"
    if kind == models.CAUSAL_LM:
        from erasekit.api.unlearning import evaluate_lm

        models.refuse_options(kind, subject, concepts=concepts, seeds=seeds, contexts=contexts, steps=steps, guidance=guidance,
                              judge=judge, prompts=prompts, retain_prompts=retain_prompts, limit=limit, where=where,
                              samples=samples, fidelity=fidelity, cache=cache, batch_size=batch_size)  # fmt: skip
        parallel.refuse_sharded("evaluating a language model")
        return evaluate_lm(model, erasure, split=split, oracle=oracle, out=out, device=device, dtype=dtype)
    models.refuse_options(kind, subject, split=split, oracle=oracle)
    parallel.join(device)  # under torchrun / accelerate: the images are drawn in shards (erasekit.core.parallel)
    sampling = SamplingConfig(steps=steps, guidance_scale=guidance,
                              batch_size=SamplingConfig.batch_size if batch_size is None else batch_size)  # fmt: skip
    sampling.validate()  # before any model loads
    if judge is not None or prompts is not None or retain_prompts is not None:
        models.refuse_mode("a judged evaluation (--prompts)", "it sizes the testbed evaluation (no --prompts); use --samples",
                           seeds=seeds, contexts=contexts)  # fmt: skip
        sets = PromptFiles(prompts, retain_prompts, limit, where)
        return _evaluate_judged(model, erasure, concepts, out, judge, sets, samples or 1, fidelity, sampling, device, dtype,
                                progress, cache)  # fmt: skip
    models.refuse_mode("the testbed evaluation (no --prompts)", "it applies to a judged evaluation with --prompts FILE",
                       limit=limit, where=where, samples=samples, fidelity=fidelity)  # fmt: skip
    return _evaluate_images(model, erasure, concepts, out, 4 if seeds is None else seeds, 12 if contexts is None else contexts,
                            sampling, device, dtype, progress, cache)  # fmt: skip


def _judged_concept(concepts, loaded) -> str:
    """The concept a judged job looks for: the first named, else the erasure's first."""
    from erasekit.core.errors import ConfigError

    named = list(concepts or (loaded.request.concepts if loaded else []))
    if not named:
        raise ConfigError("name the concept the judge looks for: --concept NAME (or an --erasure whose request names one)")
    return named[0]


def judges_for(judge_spec: str | None, fidelity_spec: str | None, model):
    """``(judge, fidelity judge or None)`` of a judged job on ``model`` (a name, or ``None`` for a
    loaded pipeline): ``judge_spec`` (default ``testbed``, for a testbed model only) and a
    CLIPScore ``fidelity_spec``, built before the model loads."""
    from erasekit.core.errors import ConfigError
    from erasekit.judges import make_judge

    if judge_spec is None and (model is None or not models.is_testbed(model)):
        raise ConfigError(
            "this model has no judge of its own: pass --judge NAME (see 'erasekit judges'; e.g. nudenet, clip:clip=DIR)"
        )
    judge = make_judge(judge_spec or "testbed", kind=models.DIFFUSION, model=model or "testbed")
    fidelity = make_judge(fidelity_spec, kind=models.DIFFUSION) if fidelity_spec is not None else None
    if fidelity is not None and not hasattr(fidelity, "score"):
        raise ConfigError(
            f"--fidelity {fidelity_spec!r}: the fidelity judge must score images against their prompts (clip-score)"
        )
    return judge, fidelity


def _evaluate_guarded(model, erasure, guard, out, **options) -> dict:
    """:func:`evaluate` of ``guard`` stacked on ``erasure`` (or alone); the report names both and is
    written once (its path checked before any work against the model, erasure and guard)."""
    from erasekit.api.attacking import _erasure_label
    from erasekit.core.erasure import stacked

    lm = models.kind_of_any(model) == models.CAUSAL_LM  # its report names the erasure by method ("ga+refusal-guard")
    if out is not None and not lm:
        inputs = model_inputs(model) if isinstance(model, (str, os.PathLike)) else []
        inputs += [str(p) for p in (erasure, guard) if isinstance(p, (str, os.PathLike))]
        out = check_file_output(out, "evaluation", (".json",), inputs, what="evaluation report")
    report = evaluate(model, stacked(erasure, guard), out=out if lm else None, **options)
    if lm:
        return report
    report["erasure"] = _erasure_label(erasure, None, guard)
    if out is not None:
        write_report(out, report, "evaluation")
    return report


def _evaluate_judged(model, erasure, concepts, out, judge_spec, sets: PromptFiles, samples: int, fidelity_spec,
                     sampling: SamplingConfig, device, dtype, progress, cache=None) -> dict:  # fmt: skip
    """:func:`evaluate` with a judge on prompt files (any pipeline)."""
    from erasekit.core.erasure import Erasure
    from erasekit.evaluation.judged import check_known, evaluate_with_judge

    loaded_pipe = not isinstance(model, (str, os.PathLike))
    target, retain = sets.read()
    loaded = erasure if isinstance(erasure, Erasure) or erasure is None else Erasure.load(erasure)
    concept = _judged_concept(concepts, loaded)
    judge, fidelity = judges_for(judge_spec, fidelity_spec, None if loaded_pipe else model)
    check_known(judge, concept)
    grid = None
    if out is not None:
        out = check_file_output(
            out, "evaluation", (".json",), [] if loaded_pipe else model_inputs(model), what="evaluation report"
        )
        grid = check_file_output(out.with_suffix(".png"), "image", IMAGE_SUFFIXES, what="evaluation images")
    if cache is not None:
        from erasekit.evaluation.cache import ImageCache

        cache = ImageCache(cache)
    if not loaded_pipe:
        models.check_placement(device, dtype)
    pipe = model if loaded_pipe else models.load_pipeline(model, device=device, dtype=dtype)
    if loaded is not None:
        loaded.check_compatible(pipe, hint="evaluate it on the model it was made from")
    report = evaluate_with_judge(pipe, judge, concept, target, retain, loaded, samples, sampling,
                                 fidelity, progress, grid, cache)  # fmt: skip
    report.update(model=models.model_label(getattr(pipe, "name_or_path", "") if loaded_pipe else model), prompt_set=sets.describe(),
                  erasure=None)  # fmt: skip
    if loaded is not None:
        report["erasure"] = f"{loaded.method} erasure (in memory)" if isinstance(erasure, Erasure) else str(erasure)
        report["cost"] = {"seconds": loaded.timings.get("seconds"), "mib": round(loaded.num_bytes() / 2**20, 4)}
    if out is not None:
        write_report(out, report, "evaluation")
    return report


def _evaluate_images(model, erasure, concepts, out, seeds: int, contexts: int, sampling: SamplingConfig, device, dtype, progress,
                     cache=None) -> dict:  # fmt: skip
    """:func:`evaluate` on an image pipeline (``cache``: an image cache directory, or ``None``)."""
    from erasekit.core.erasure import Erasure
    from erasekit.core.errors import ConfigError
    from erasekit.evaluation import evaluate_on_testbed
    from erasekit.evaluation.cache import ImageCache
    from erasekit.evaluation.prompts import resolve_concept
    from erasekit.judges.testbed import TestbedJudge

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
    store = None if cache is None else ImageCache(cache)
    pipe = model if loaded_pipe else models.load_pipeline(model, device=device, dtype=dtype)
    if loaded is not None:  # before any image is generated
        loaded.check_compatible(pipe, hint="evaluate it on the model it was made from")
    report = evaluate_on_testbed(
        pipe, judge, targets, erasure=loaded, seeds=seeds, n_contexts=contexts,
        sampling=sampling, progress=progress, cache=store,
    )  # fmt: skip
    report["model"] = models.model_label(root if loaded_pipe else model)
    report["judge"] = TestbedJudge(judge).describe()
    report["erasure"] = (
        None if erasure is None else (f"{loaded.method} erasure (in memory)" if isinstance(erasure, Erasure) else str(erasure))
    )
    if out is not None:
        write_report(out, report, "evaluation")
    return report


def _image_train_config(smoke: bool, unet_steps, text_encoder, padding, exclude, codec, retrain_codec, token_loss=None):
    """The image testbed's :class:`~erasekit.testbeds.image.train.TrainConfig` from the job's options,
    each checked before any work (an oracle reuses the shipped judge and VAE unless ``retrain_codec``)."""
    from erasekit.testbeds.image.train import TrainConfig, check_exclusions

    cfg = TrainConfig.smoke() if smoke else TrainConfig()
    if unet_steps is not None:
        cfg.unet_steps = unet_steps
    if text_encoder is not None:  # each checked on construction, before any work
        cfg = dataclasses.replace(cfg, text_encoder=text_encoder)
    if padding is not None:
        cfg = dataclasses.replace(cfg, padding=padding)
    if token_loss is not None:
        if cfg.text_encoder != "contrastive":
            raise InvalidInputError("--token-loss trains a pre-trained text encoder: pass it with --text-encoder contrastive")
        cfg = dataclasses.replace(cfg, text_token_loss=token_loss)
    if codec is not None and retrain_codec:
        raise InvalidInputError("--codec reuses a testbed's judge and VAE, --retrain-codec trains them: pass one of them")
    if retrain_codec and not exclude:
        raise InvalidInputError("--retrain-codec applies with --exclude (a full training trains the judge and VAE anyway)")
    if exclude:
        cfg.exclude = check_exclusions(exclude)
    if codec is not None or (exclude and not retrain_codec):
        cfg.codec_from = codec or "testbed"
        models.resolve_model(cfg.codec_from)  # the reused weights must be there before any work
    return cfg


def train_testbed(
    workdir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    smoke: bool = False,
    exclude: list[str] | None = None,
    unet_steps: int | None = None,
    retrain_codec: bool = False,
    epochs: int | None = None,
    llm: bool = False,
    text_encoder: str | None = None,
    padding: str | None = None,
    codec: str | None = None,
    token_loss: float | None = None,
    log=print,
) -> Path:
    """What ``erasekit testbed train`` does: train the image testbed (judge, VAE, text encoder and
    UNet; ``exclude``: an oracle without those concepts, reusing the shipped judge and VAE unless
    ``retrain_codec``) or, with ``llm``, the fact-world GPT-2 (``exclude``: one forget split, an
    oracle; ``epochs`` overrides its run length). ``text_encoder`` (image testbed): ``joint`` or
    ``contrastive``, ``padding`` (image testbed): ``prompt`` or ``shuffled``, ``token_loss`` (with
    ``contrastive``): the weight of the encoder's per-token objective
    (:class:`~erasekit.testbeds.image.train.TrainConfig`); ``codec`` (image testbed): a testbed whose
    judge and VAE are reused instead of trained (an oracle reuses the shipped one unless ``retrain_codec``). Both directories are checked before anything is
    written; ``resume`` continues from the workdir's checkpoints. Returns the model directory."""
    if llm:
        from erasekit.testbeds.facts.train import LLMTrainConfig, LLMTrainer, check_split

        models.refuse_options(models.CAUSAL_LM, "the --llm testbed", unet_steps=unet_steps, retrain_codec=retrain_codec,
                              text_encoder=text_encoder, padding=padding, codec=codec, token_loss=token_loss)  # fmt: skip
        if exclude and len(exclude) > 1:
            raise InvalidInputError("--llm --exclude takes one forget split (forget01, forget05 or forget10)")
        workdir = Path("runs/testbed-llm") if workdir is None else Path(workdir)
        check_dir_output(workdir, "testbed-train", what="training directory")
        check_dir_output(out or workdir / "model", "pipeline", what="fact-world model directory")
        lm_cfg = LLMTrainConfig.smoke() if smoke else LLMTrainConfig()
        lm_cfg.exclude = check_split(exclude[0]) if exclude else None
        if epochs is not None:
            lm_cfg.epochs = epochs
        return LLMTrainer(workdir, lm_cfg, log=log).run(resume=resume, out=out)
    from erasekit.testbeds.image.train import Trainer

    models.refuse_options(models.DIFFUSION, "the image testbed", epochs=epochs)
    workdir = Path("runs/testbed") if workdir is None else Path(workdir)
    check_dir_output(workdir, "testbed-train", what="testbed training directory")  # both checked before anything is written
    check_dir_output(out or workdir / "pipeline", "pipeline", what="testbed pipeline directory")
    cfg = _image_train_config(smoke, unet_steps, text_encoder, padding, exclude, codec, retrain_codec, token_loss)
    return Trainer(workdir, cfg, log=log).run(resume=resume, out=out)
