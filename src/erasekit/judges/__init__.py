"""Judges: what decides whether a concept came back, one module each, registered by name on the
registry's ``kinds`` axis (``erasekit judges`` lists them):

- :mod:`.testbed` — images of the testbed world, by its classifier (ships with erasekit);
- :mod:`.facts` — answers of the fact world (``fact-answer``);
- :mod:`.nudenet` — NudeNet 3.4's ONNX detector (ships in its wheel; ``pip install 'erasekit[judges]'``);
- :mod:`.clip` — CLIP zero-shot, CLIPScore and Q16 on weights the user brings;
- :mod:`.classifier` — any local image-classification model, its labels mapped to concepts.

A judge is named with its options as ``NAME[:key=value,...]`` (:func:`parse_judge`), e.g.
``nudenet:threshold=0.45,classes=sensitive`` or ``clip:clip=/models/clip-vit-l14,labels=dog|car``;
:func:`make_judge` builds it for a kind of model, refusing an option the judge does not take.
Every real-model judge's ``describe()`` (name, package and version, classes or labels, threshold,
weights) goes into the results it judges. A new judge is one module here plus its import below.
"""

from __future__ import annotations

from erasekit.core.errors import ConfigError
from erasekit.judges import classifier, clip, facts, nudenet, testbed  # noqa: F401  (each module registers its judge)
from erasekit.judges.facts import AnswerJudge
from erasekit.judges.testbed import ConceptJudge, TestbedJudge, load_classifier_of


def parse_judge(text: str) -> tuple[str, dict[str, str]]:
    """``NAME[:key=value,...]`` -> ``(name, {key: value})``; one-line errors for a malformed spec.
    A value may hold ``|`` and ``;`` (lists, label maps) but not ``,``."""
    name, _, rest = text.strip().partition(":")
    if not name.strip():
        raise ConfigError(f"judge {text!r}: give a name, e.g. nudenet or clip:clip=DIR (see 'erasekit judges')")
    options: dict[str, str] = {}
    for item in (p for p in rest.split(",") if p.strip()):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"judge {text!r}: options are key=value, separated by commas (got {item!r})")
        options[key.strip()] = value.strip()
    return name.strip(), options


def make_judge(text: str, kind: str | None = None, model=None):
    """The judge ``text`` names (:func:`parse_judge`), for a model of ``kind`` (refused when the judge
    does not judge that kind), built by its registered factory with ``model`` and its options."""
    from erasekit.core.registry import get_judge

    name, options = parse_judge(text)
    spec = get_judge(name, kind)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        takes = f"it takes {', '.join(spec.options)}" if spec.options else "it takes none"
        raise ConfigError(f"judge {name!r} takes no option {unknown[0]!r}; {takes}")
    return spec.factory(model, **options)


__all__ = ["AnswerJudge", "ConceptJudge", "TestbedJudge", "load_classifier_of", "make_judge", "parse_judge"]
