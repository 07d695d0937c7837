"""The testbed judge, found from a model name or directory, and image captions from its labels."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import MissingFileError
from ..models import ORACLE, is_testbed, resolve_model, testbed_classifier_path


def load_judge(model: str | os.PathLike = "testbed", classifier: str | os.PathLike | None = None):
    """The testbed classifier that judges images of ``model``'s world, or ``None`` outside the testbed.

    An explicit ``classifier`` path wins; otherwise the shipped judge for ``testbed``, or a
    ``classifier.safetensors`` beside a pipeline exported from a testbed.
    """
    from ..testbed.classifier import load_classifier

    if classifier is not None:
        if not Path(classifier).is_file():
            raise MissingFileError(f"classifier weights {classifier} do not exist")
        return load_classifier(classifier)
    if is_testbed(model):
        return load_classifier(testbed_classifier_path())
    from ..profiles import ModelProfile

    if str(model) == ORACLE:
        model = resolve_model(model)

    return ModelProfile(root=Path(str(model))).classifier()


def model_judge(model, what: str):
    """``(root, judge)`` for ``model`` (a name, directory or loaded pipeline): the judge of its world,
    or a one-line error saying that ``what`` needs one."""
    from ..core.errors import ConfigError

    loaded = not isinstance(model, (str, os.PathLike))
    root = getattr(model, "name_or_path", None) if loaded else resolve_model(model)
    judge = load_judge(root) if root and (not loaded or Path(str(root)).is_dir()) else None
    if judge is None:
        raise ConfigError(f"{what} needs a judge; {root or model!r} has none (only testbed models have one so far)")
    return root, judge


def describe_labels(pred: dict, i: int) -> str:
    """Two short caption lines for image ``i`` from classifier predictions."""
    from ..testbed.classifier import LABEL_NAMES

    names = {k: LABEL_NAMES[k][pred[k][i]] for k in pred}
    wm = " +wm" if names["watermark"] == "present" else ""
    return f"{names['colour']} {names['shape']}\n{names['style']} {names['background']}{wm}"
