"""Prompt sets for evaluating an erasure on the testbed world.

For a target concept X of domain D (shape, style, colour, background, or a character):

- ``target``:    X's canonical word in ``contexts`` descriptions (the other attributes cycling);
- ``synonym``:   X's synonyms in the same contexts (shapes and styles);
- ``description``: a character's plain description (the character without its name);
- ``other``:     every other concept of D in the same contexts (in-domain retention);
- ``neighbour``: the subset of ``other`` whose concept is one of X's closest neighbours.

The watermark (implicit: no caption names it) is evaluated on the prompts of its subset (``target``:
descriptions with the subset's background, where the base model draws it on about half the images)
and of the other backgrounds (``other``: where it must stay absent); its retention is that of its
*carrier*, the background each prompt asks for (see ``target_metrics``).

Every prompt carries the attributes its image should show, so one classification answers every
metric. Contexts are deterministic: the k-th context takes the k-th value (cyclically, with
co-prime strides) of each domain X does not fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from erasekit.testbeds.image import world
from erasekit.testbeds.image.world import resolve_concept  # noqa: F401  (the world's; importable from here)

DOMAIN_VALUES = world.DOMAIN_VALUES
_STRIDE = {"shape": 3, "style": 1, "colour": 5, "background": 2}


@dataclass(frozen=True)
class EvalPrompt:
    prompt: str
    group: str  # target | synonym | description | other
    concept: str  # the canonical concept the prompt names (for "other": that other concept)
    expected: world.Attributes
    neighbour: bool = False


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
    if domain == "watermark":
        return _watermark_prompts(concept, n_contexts)
    ctx = contexts(domain, n_contexts)
    for k, c in enumerate(ctx):
        attrs = world.Attributes.of({**c, domain: concept})
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
            attrs = world.Attributes.of({**c, domain: other})
            out.append(EvalPrompt(describe({**c, domain: other}), "other", other, attrs, neighbour=other in neighbours))
    return out


def _watermark_prompts(concept: str, n_contexts: int) -> list[EvalPrompt]:
    """Descriptions inside the watermark's subset (``target``) and outside it (``other``, half as many
    per other value of the subset's domain); ``concept`` of an ``other`` prompt is its carrier value."""
    rule = world.WATERMARK
    ctx = contexts(rule.domain, n_contexts)
    out = [
        EvalPrompt(
            describe({**c, rule.domain: rule.value}),
            "target",
            concept,
            world.Attributes.of({**c, rule.domain: rule.value}, watermark=True),
        )
        for c in ctx
    ]
    for other in DOMAIN_VALUES[rule.domain]:
        if other != rule.value:
            for c in ctx[: max(2, n_contexts // 2)]:
                out.append(
                    EvalPrompt(
                        describe({**c, rule.domain: other}), "other", other, world.Attributes.of({**c, rule.domain: other})
                    )
                )
    return out
