"""The testbed judge, found from a model name or directory, and image captions from its labels."""

from __future__ import annotations

import os
from pathlib import Path

from erasekit.models import resolve_model


def load_judge(model: str | os.PathLike = "testbed", classifier: str | os.PathLike | None = None):
    """The testbed classifier that judges images of ``model``'s world, or ``None`` outside the testbed
    (:func:`erasekit.judges.testbed.load_classifier_of`: an explicit ``classifier`` path wins)."""
    from erasekit.judges.testbed import load_classifier_of

    return load_classifier_of(model, classifier)


def model_judge(model, what: str):
    """``(root, judge)`` for ``model`` (a name, directory or loaded pipeline): the judge of its world,
    or a one-line error saying that ``what`` needs one."""
    from erasekit.core.errors import ConfigError

    loaded = not isinstance(model, (str, os.PathLike))
    root = getattr(model, "name_or_path", None) if loaded else resolve_model(model)
    judge = load_judge(root) if root and (not loaded or Path(str(root)).is_dir()) else None
    if judge is None:
        raise ConfigError(f"{what} needs a judge; {root or model!r} has none (only testbed models have one so far)")
    return root, judge


def describe_labels(pred: dict, i: int) -> str:
    """Two short caption lines for image ``i`` from classifier predictions."""
    from erasekit.testbeds.image.classifier import LABEL_NAMES

    names = {k: LABEL_NAMES[k][pred[k][i]] for k in pred}
    wm = " +wm" if names["watermark"] == "present" else ""
    return f"{names['colour']} {names['shape']}\n{names['style']} {names['background']}{wm}"
