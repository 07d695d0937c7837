"""The Python API behind the CLI commands (same names, same arguments)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .core.errors import InvalidInputError, MissingFileError
from .core.io import write_json
from .generation import SamplingConfig, generate, make_grid, save_image, warn_unknown_words
from .models import is_testbed, load_pipeline, resolve_model, testbed_classifier_path


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
    resolve_model(model)  # fail fast on a bad model before anything heavy
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
    out = Path(out)
    save_image(make_grid(images, captions), out)
    return out


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
    pipe = load_pipeline(model, device=device)
    judge = load_judge(model, classifier)
    if judge is None:
        raise MissingFileError(f"no testbed classifier found for {model!r}; pass --classifier PATH")
    report = run_gate(pipe, judge, seeds=seeds, sampling=SamplingConfig(steps=steps, guidance_scale=guidance), progress=progress)
    report["model"] = str(model)
    write_json(out, report)
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


def run_demo(out: str | os.PathLike = "erasekit-demo", seeds: int = 2, device: str | None = None) -> list[str]:
    """The main job on the testbed: a labelled grid of the demo prompts and a quality-gate summary."""
    from .testbed.gate import summary_lines

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
    lines.append(f"report: {out / 'gate.json'}  ({time.time() - t0:.0f}s)")
    write_json(out / "demo.json", {"prompts": list(DEMO_PROMPTS), "seconds": round(time.time() - t0, 1)})
    return lines
