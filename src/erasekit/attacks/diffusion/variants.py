"""Rewordings of a prompt that keep what it asks for: synonyms, descriptions, paraphrase frames.

On a testbed world every word is known: a shape's or style's synonyms, a character's plain
description, and the caption frames the model was trained on (``a picture of …``, ``on white``,
``… in striped style``). On other models the user supplies synonyms and descriptions; the frames
stay generic.
"""

from __future__ import annotations

import re

PREFIXES = ("a picture of ", "an image of ", "a drawing of ")


def reframings(prompt: str) -> list[str]:
    """Paraphrase frames of ``prompt``: prefixes, the short background form, style as a phrase."""
    out = []
    bare = prompt
    for p in PREFIXES:
        if prompt.startswith(p):
            bare = prompt[len(p) :]
    short = re.sub(r"on an? (\w+) background", r"on \1", bare)
    if short != bare:
        out.append(short)
    out += [p + bare for p in PREFIXES if not prompt.startswith(p)]
    if short != bare:
        out.append(PREFIXES[0] + short)
    return list(dict.fromkeys(o for o in out if o != prompt))


def swap_word(prompt: str, word: str, replacement: str) -> str:
    """``prompt`` with the whole word ``word`` replaced (case-insensitive)."""
    return re.sub(rf"\b{re.escape(word)}\b", replacement, prompt, flags=re.IGNORECASE)


def world_variants(prompt: str, concept: str) -> list[str]:
    """Rewordings of ``prompt`` that still ask for ``concept`` in the testbed world, strongest first:
    synonyms of the concept, a character's description (and its synonyms), then paraphrase frames."""
    from erasekit.testbeds.image import world

    out: list[str] = []
    if concept in world.CHARACTERS:
        attrs = world.CHARACTERS[concept]
        description = attrs.describe()
        rest = prompt.replace(concept, "").strip()
        lead = rest if rest in ("a picture of", "an image of", "a drawing of") else ""
        out.append(f"{lead} {description}".strip())
        part_synonyms = {d: world.SYNONYMS.get(getattr(attrs, d), ()) for d in ("shape", "style")}
        for k in range(2):
            text = description
            for d, forms in part_synonyms.items():
                if forms:
                    text = swap_word(text, getattr(attrs, d), forms[k % len(forms)])
            out.append(text)
        out += reframings(description)
    elif concept in world.IMPLICIT_TRIGGERS:
        out += reframings(prompt)
        out += list(world.IMPLICIT_TRIGGERS[concept])
        out += [f"{world.ANCHORS[0]} {t}" for t in world.IMPLICIT_TRIGGERS[concept]]
    else:
        for syn in world.SYNONYMS.get(concept, ()):
            out.append(swap_word(prompt, concept, syn))
        out += reframings(prompt)
        for syn in world.SYNONYMS.get(concept, ()):
            out += reframings(swap_word(prompt, concept, syn))[:1]
    return list(dict.fromkeys(o for o in out if o and o != prompt))


def user_variants(prompt: str, concept: str, synonyms: list[str]) -> list[str]:
    """Rewordings from user-given synonyms / descriptions (any model), then paraphrase frames."""
    out = [swap_word(prompt, concept, s) if re.search(rf"\b{re.escape(concept)}\b", prompt, re.I) else f"{prompt}, {s}"
           for s in synonyms]  # fmt: skip
    out += reframings(prompt)
    return list(dict.fromkeys(o for o in out if o and o != prompt))
