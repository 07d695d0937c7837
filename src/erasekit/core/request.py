"""What to erase: target concepts, where each goes (its anchor), what must be preserved.

An :class:`ErasureRequest` comes from Python, from CLI flags, or from a YAML file::

    targets:
      - concept: star
        anchor: a shape          # optional; "" means the empty prompt (its BOS token)
        synonyms: [pentagram]    # optional; erased together with the concept
      - concept: zorbo
      - concept: watermark       # an implicit concept: no word names it, so it is erased
        prompts: [on a white background]   # through the prompts whose images show it (its triggers)
    preserve: [circle, heart]
    templates: ["a picture of {}", "an image of {}"]   # optional expansion templates
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from erasekit.core.errors import ConfigError, MissingFileError


def check_template(tpl: str) -> None:
    """A template must be text with exactly one ``{}`` (where the phrase goes) and no other field."""
    import string

    if not isinstance(tpl, str):
        raise ConfigError(f"a template must be text, got {tpl!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(tpl) if f is not None]
    except ValueError as e:
        raise ConfigError(
            f"template {tpl!r} is malformed ({e}); write one '{{}}' where the concept goes, and '{{{{' for a literal brace"
        ) from None
    if fields != [""]:
        raise ConfigError(
            f"template {tpl!r} must contain exactly one '{{}}' where the concept goes and no other field (got {len(fields)} fields)"
        )


def _text(value, what: str, empty_ok: bool = False) -> str:
    """``value`` if it is text (a number is taken as its text; ``null``, lists and mappings are errors)."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise ConfigError(f"{what} must be text, got {value!r}")
    text = str(value)
    if not empty_ok and not text.strip():
        raise ConfigError(f"{what} is empty")
    return text


def check_printable(text: str, what: str) -> None:
    """Refuse a control character (a newline, a tab, an escape...) in a concept, anchor or prompt: it
    would be erased as part of one concept that no user prompt spells the same way."""
    bad = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise ConfigError(f"{what} {text!r} contains the control character {bad!r}; write each concept on its own --concept")


def _text_list(value, what: str, items: tuple[type, ...] = ()) -> list:
    """A list of texts (or of ``items`` types); ``None`` is an empty list, a scalar is an error."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{what} must be a list (e.g. [{value!r}]), got {type(value).__name__} {value!r}")
    if items:
        for v in value:
            if not isinstance(v, items):
                raise ConfigError(f"each entry of {what} must be a name or a mapping, got {v!r}")
        return list(value)
    return [_text(v, f"each entry of {what}") for v in value]


@dataclass
class Target:
    """One concept to erase; ``anchor`` None lets the method choose its default guide.

    ``prompts`` makes the target *implicit*: the concept has no word of its own (a watermark absorbed
    from training data), so methods erase it through the prompts whose images show it (its triggers)
    and ``concept`` is only its name (for evaluation and reports), never encoded as text.
    """

    concept: str
    anchor: str | None = None
    synonyms: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    @property
    def implicit(self) -> bool:
        return bool(self.prompts)

    def phrases(self) -> list[str]:
        """Every phrase whose meaning is erased: the concept (or its trigger prompts) and its synonyms."""
        return [*(self.prompts or [self.concept]), *self.synonyms]


def _as_target(t) -> Target:
    """A :class:`Target` from a Target, a name, or a mapping of its fields (anything else is an error)."""
    if isinstance(t, Target):
        return t
    if isinstance(t, str):
        return Target(t)
    if isinstance(t, dict):
        try:
            return Target(**t)
        except TypeError:
            raise ConfigError(
                f"a target mapping may have concept, anchor, synonyms, prompts; got {sorted(map(str, t))}"
            ) from None
    raise ConfigError(f"a target must be a concept name or a mapping, got {t!r}")


@dataclass
class ErasureRequest:
    targets: list[Target]
    preserve: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.targets, (list, tuple)):
            raise ConfigError(f"targets must be a list of concepts, got {self.targets!r}")
        self.targets = [_as_target(t) for t in self.targets]
        self.validate()

    def validate(self) -> None:
        if not self.targets:
            raise ConfigError("an erasure request needs at least one target concept (--concept NAME)")
        seen: set[str] = set()
        for t in self.targets:
            if not isinstance(t.concept, str) or not t.concept.strip():
                raise ConfigError("a target concept is empty; give each --concept a non-empty name")
            if t.concept in seen:
                raise ConfigError(f"target concept {t.concept!r} is listed twice")
            seen.add(t.concept)
            check_printable(t.concept, "target concept")
            if t.anchor is not None and not isinstance(t.anchor, str):
                raise ConfigError(f"the anchor of {t.concept!r} must be text, got {t.anchor!r}")
            if t.anchor:
                check_printable(t.anchor, f"the anchor of {t.concept!r}")
            for what, values in (("trigger prompts", t.prompts), ("synonyms", t.synonyms)):
                if not isinstance(values, (list, tuple)) or any(not isinstance(p, str) or not p.strip() for p in values):
                    raise ConfigError(f"the {what} of {t.concept!r} must be a list of non-empty texts, got {values!r}")
                for p in values:
                    check_printable(p, f"a {what[:-1]} of {t.concept!r}")
        for what, values in (("preserve", self.preserve), ("templates", self.templates)):
            if not isinstance(values, (list, tuple)) or any(not isinstance(p, str) or not p.strip() for p in values):
                raise ConfigError(f"{what} must be a list of non-empty texts, got {values!r}")
            for p in values:
                check_printable(p, "a preserved concept" if what == "preserve" else "a template")
        clash = seen & set(self.preserve)
        if clash:
            raise ConfigError(f"concepts cannot be both erased and preserved: {', '.join(sorted(clash))}")
        for tpl in self.templates:
            check_template(tpl)

    @property
    def concepts(self) -> list[str]:
        return [t.concept for t in self.targets]

    def with_implicit(self, triggers: dict[str, tuple[str, ...]]) -> "ErasureRequest":
        """A copy in which targets named in ``triggers`` (a model's known implicit concepts) and given
        no prompts of their own get those trigger prompts."""
        targets = [
            replace(t, prompts=list(triggers[t.concept])) if t.concept in triggers and not t.prompts else t for t in self.targets
        ]
        return ErasureRequest(targets, list(self.preserve), list(self.templates))

    def prompted_phrases(self, target: Target | None = None) -> list[tuple[str, str]]:
        """``(prompt, phrase)`` for every phrase of ``target`` (default: of every target), each phrase
        followed by its template expansions."""
        targets = self.targets if target is None else [target]
        return [(p, phrase) for t in targets for phrase in t.phrases() for p in self.expand(phrase)]

    def preserve_prompts(self) -> list[str]:
        """Every preserved concept followed by its template expansions."""
        return [p for phrase in self.preserve for p in self.expand(phrase)]

    def expand(self, phrase: str) -> list[str]:
        """``phrase`` itself followed by its expansion templates."""
        return [phrase, *(tpl.format(phrase) for tpl in self.templates)]

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> "ErasureRequest":
        """Build a request from a mapping (YAML, JSON, ``erasure.json``), checking every field's type:
        a scalar where a list belongs, or ``null`` where text belongs, is an error, never a guess."""
        if not isinstance(data, dict):
            raise ConfigError("an erasure request must be a mapping with 'targets' (and optionally 'preserve', 'templates')")
        unknown = set(data) - {"targets", "preserve", "templates"}
        if unknown:
            raise ConfigError(
                f"unknown request fields: {', '.join(sorted(map(str, unknown)))} (allowed: targets, preserve, templates)"
            )
        targets = []
        for t in _text_list(data.get("targets"), "targets", items=(str, dict)):
            if isinstance(t, str):
                targets.append(Target(t))
                continue
            bad = set(t) - {"concept", "anchor", "synonyms", "prompts"}
            if bad or "concept" not in t:
                raise ConfigError(
                    f"each target needs 'concept' and may have 'anchor', 'synonyms', 'prompts'; got {sorted(map(str, t))}"
                )
            concept = _text(t["concept"], "a target's 'concept'")
            anchor = None if t.get("anchor") is None else _text(t["anchor"], f"the anchor of {concept!r}", empty_ok=True)
            targets.append(Target(concept, anchor, _text_list(t.get("synonyms"), f"the synonyms of {concept!r}"),
                                  _text_list(t.get("prompts"), f"the prompts of {concept!r}")))  # fmt: skip
        return ErasureRequest(
            targets, _text_list(data.get("preserve"), "preserve"), _text_list(data.get("templates"), "templates")
        )

    @staticmethod
    def from_yaml(path: str | os.PathLike) -> "ErasureRequest":
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"request file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not UTF-8 text; save the request file as UTF-8") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        return ErasureRequest.from_dict(data or {})

    @staticmethod
    def from_cli(
        concepts: list[str],
        anchor: str | None = None,
        preserve: list[str] | None = None,
        request: str | None = None,
        triggers: list[str] | None = None,
    ) -> "ErasureRequest":
        """CLI flags (and optionally a YAML file they extend): ``--anchor`` and ``--trigger`` apply to every flag target."""
        base = ErasureRequest.from_yaml(request) if request else None
        targets = list(base.targets) if base else []
        targets += [Target(c, anchor, prompts=list(triggers or [])) for c in concepts]
        if base is None and not targets:
            raise ConfigError("nothing to erase: pass --concept NAME (repeatable) or --request FILE.yaml")
        return ErasureRequest(targets, [*(base.preserve if base else []), *(preserve or [])], base.templates if base else [])


@dataclass(frozen=True)
class QAPair:
    """One question and its true answer (a fact a language model should forget or keep), and
    optionally the ``subject`` it is about (the concept ELM names in its expert / novice prompts;
    empty: the request's name)."""

    question: str
    answer: str
    subject: str = ""


@dataclass
class ForgetRequest:
    """What a language model should unlearn: ``forget`` pairs, and ``retain`` pairs whose answers
    must survive (the methods' retain terms). ``name`` labels it (a split such as ``forget01``, or
    a file name); ``refusal`` is the answer preference methods (IDK) and the refusal guard move to."""

    name: str
    forget: list[QAPair]
    retain: list[QAPair] = field(default_factory=list)
    refusal: str = "I don't know."

    def __post_init__(self) -> None:
        self.forget = [p if isinstance(p, QAPair) else _as_pair(p, "forget") for p in self.forget]
        self.retain = [p if isinstance(p, QAPair) else _as_pair(p, "retain") for p in self.retain]
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError("a forget request needs a non-empty name")
        if not self.forget:
            raise ConfigError(f"forget request {self.name!r} has no question-answer pairs to forget")
        for what, pairs in (("forget", self.forget), ("retain", self.retain)):
            for p in pairs:
                if not (isinstance(p.question, str) and p.question.strip() and isinstance(p.answer, str) and p.answer.strip()):
                    raise ConfigError(f"every {what} pair needs a non-empty question and answer, got {p!r}")

    @property
    def concepts(self) -> list[str]:
        return [self.name]

    def to_dict(self) -> dict:
        return {"kind": "forget", **asdict(self)}

    @staticmethod
    def from_dict(data: dict) -> "ForgetRequest":
        if not isinstance(data, dict) or not isinstance(data.get("forget"), list):
            raise ConfigError("a forget request must be a mapping with 'name', 'forget' (and optionally 'retain', 'refusal')")
        unknown = set(data) - {"kind", "name", "forget", "retain", "refusal"}
        if unknown:
            raise ConfigError(f"unknown forget request fields: {', '.join(sorted(map(str, unknown)))}")
        return ForgetRequest(
            _text(data.get("name"), "the forget request's name"),
            list(data["forget"]),
            list(_text_list(data.get("retain"), "retain", items=(dict, list))),
            _text(data.get("refusal", "I don't know."), "the refusal answer"),
        )


def _as_pair(item, what: str) -> QAPair:
    """A :class:`QAPair` from ``{"question": ..., "answer": ...[, "subject": ...]}`` or ``[question, answer]``."""
    if isinstance(item, dict) and set(item) >= {"question", "answer"}:
        subject = item.get("subject") or ""
        if not isinstance(subject, str):
            raise ConfigError(f"a {what} pair's subject must be text, got {subject!r}")
        return QAPair(item["question"], item["answer"], subject)
    if isinstance(item, (list, tuple)) and len(item) == 2:
        return QAPair(*item)
    raise ConfigError(f"each {what} item must be {{'question': ..., 'answer': ...}} or [question, answer], got {item!r}")


def request_from_dict(data: dict) -> "ErasureRequest | ForgetRequest":
    """The request stored in an erasure's description: a :class:`ForgetRequest` (``kind: forget``)
    for a language model, else an :class:`ErasureRequest`."""
    if isinstance(data, dict) and data.get("kind") == "forget":
        return ForgetRequest.from_dict(data)
    return ErasureRequest.from_dict(data)
