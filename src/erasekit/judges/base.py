"""What every image judge is and how a result names it.

An image judge answers ``shows(images, concept) -> bool [N]`` (is the concept in each image?) and
``knows(concept)`` (can it tell?); the real-model judges also give ``scores(images, concept) ->
float [N]`` (the number ``shows`` thresholds) and ``describe()``: the judge's name, the package and
version that computed it, its classes or labels, its threshold and the weights it read, which every
result records (numbers from different detectors, classes or thresholds are not comparable).
Images are ``uint8 [N, H, W, 3]`` RGB arrays, as erasekit generates them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

from erasekit.core.errors import ConfigError, MissingFileError


def package_version(package: str) -> str | None:
    """The installed version of ``package`` (``None`` when it is not installed)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def need(module: str, package: str, judge: str):
    """Import ``module`` for ``judge``; a missing package is a one-line error naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"the {judge} judge needs the {package} package: pip install 'erasekit[judges]' (or pip install {package})"
        ) from None


def weights_dir(path: str | os.PathLike | None, judge: str, option: str, what: str) -> Path:
    """The local directory of a judge's weights (the user brings them; nothing is downloaded)."""
    if path is None:
        raise ConfigError(f"the {judge} judge needs {what}: pass {option}=DIR (a local directory; nothing is downloaded)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise MissingFileError(f"{judge} judge: {option}={path} is not a directory ({what})")
    return p


def as_images(images) -> np.ndarray:
    """``images`` as ``uint8 [N, H, W, 3]``; a one-line error for anything else."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ConfigError(f"a judge reads uint8 RGB images [N, H, W, 3], got {arr.dtype} {tuple(arr.shape)}")
    return arr


def check_threshold(value: float, judge: str) -> float:
    """A threshold in [0, 1]."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{judge} judge: threshold must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{judge} judge: threshold must lie in [0, 1], got {value}")
    return value


@lru_cache(maxsize=8)
def load_local(directory: str, model_class: str, processor_class: str, what: str):
    """``(model, processor)`` of the local ``transformers`` directory ``directory`` (classes named in
    ``transformers``), in evaluation mode without gradients, read once per directory; a one-line
    error naming ``what`` when the directory holds something else. Nothing is downloaded."""
    import transformers

    from erasekit.models.load import quiet_transformers

    try:
        with quiet_transformers():
            model = getattr(transformers, model_class).from_pretrained(directory, use_safetensors=True, use_kernels=False)
            processor = getattr(transformers, processor_class).from_pretrained(directory)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{directory} is not {what} directory: {str(e).splitlines()[0]}") from None
    return model.eval().requires_grad_(False), processor
