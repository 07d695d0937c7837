"""Prompt sets for evaluating an erasure on the testbed world.

For a target concept X of domain D (shape, style, colour, background, or a character):

- ``target``:    X's canonical word in ``contexts`` descriptions (the other attributes cycling);
- ``synonym``:   X's synonyms in the same contexts (shapes and styles);
- ``description``: a character's plain description (the character without its name);
- ``other``:     every other concept of D in the same contexts (in-domain retention);
- ``neighbour``: the subset of ``other`` whose concept is one of X's closest neighbours.

Every prompt carries the attributes its image should show, so one classification answers every
metric. Contexts are deterministic: the k-th context takes the k-th value (cyclically, with
co-prime strides) of each domain X does not fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import ConfigError
from ..testbed import world

DOMAIN_VALUES: dict[str, tuple[str, ...]] = {
    "shape": world.SHAPES,
    "style": world.STYLES,
    "colour": tuple(world.COLOURS),
    "background": tuple(world.BACKGROUNDS),
}
_STRIDE = {"shape": 3, "style": 1, "colour": 5, "background": 2}


@dataclass(frozen=True)
class EvalPrompt:
    prompt: str
    group: str  # target | synonym | description | other
    concept: str  # the canonical concept the prompt names (for "other": that other concept)
    expected: world.Attributes
    neighbour: bool = False


def resolve_concept(phrase: str) -> tuple[str, str]:
    """(canonical concept, domain) of a testbed target; clear error for anything else."""
    concept = world.canonical(phrase.strip().lower())
    if concept is None:
        raise ConfigError(
            f"cannot evaluate {phrase!r} on the testbed: targets must be world concepts "
            "(a shape, style, colour, background or character name; see docs/testbed.md)"
        )
    return concept, world.domain_of(concept)


def contexts(domain: str, n: int) -> list[dict[str, str]]:
    """``n`` attribute assignments for the domains other than ``domain``."""
    out = []
    for k in range(n):
        out.append({d: vals[(k * _STRIDE[d] + k // len(vals)) % len(vals)] for d, vals in DOMAIN_VALUES.items() if d != domain})
    return out


def describe(attrs: dict[str, str], words: dict[str, str] | None = None) -> str:
    """Canonical description template, with optional word replacements (synonyms)."""
    w = {**attrs, **(words or {})}
    return f"a {w['colour']} {w['style']} {w['shape']} on a {w['background']} background"


def prompt_set(target: str, n_contexts: int = 12) -> list[EvalPrompt]:
    concept, domain = resolve_concept(target)
    out: list[EvalPrompt] = []
    if domain == "character":
        attrs = world.CHARACTERS[concept]
        for tpl in world.CHARACTER_TEMPLATES:
            out.append(EvalPrompt(tpl.format(name=concept), "target", concept, attrs))
        out.append(EvalPrompt(attrs.describe(), "description", concept, attrs))
        for other, oattrs in world.CHARACTERS.items():
            if other != concept:
                for tpl in world.CHARACTER_TEMPLATES:
                    out.append(EvalPrompt(tpl.format(name=other), "other", other, oattrs, neighbour=True))
        return out
    ctx = contexts(domain, n_contexts)
    for k, c in enumerate(ctx):
        attrs = world.Attributes(**{**c, domain: concept})
        out.append(EvalPrompt(describe({**c, domain: concept}), "target", concept, attrs))
        synonyms = world.SYNONYMS.get(concept, ())
        if synonyms:
            syn = synonyms[k % len(synonyms)]
            out.append(EvalPrompt(describe({**c, domain: concept}, {domain: syn}), "synonym", concept, attrs))
    neighbours = set(world.NEIGHBOURS.get(concept, ()))
    for other in DOMAIN_VALUES[domain]:
        if other == concept:
            continue
        for c in ctx[: max(2, n_contexts // 2)]:
            attrs = world.Attributes(**{**c, domain: other})
            out.append(EvalPrompt(describe({**c, domain: other}), "other", other, attrs, neighbour=other in neighbours))
    return out
