"""The testbed's procedural image world: every image comes with exact labels.

An image shows one *shape* drawn in one *style* and one *colour* on one *background*. A share of the
images of one subset carries a small *watermark* that no caption ever names (the analogue of
watermarks absorbed from web data). Three *characters* are proper nouns bound to one fixed
combination of attributes (the analogue of a celebrity or a copyrighted character); they are also
drawn under their plain description, so erasing the name while the description still produces the
character can be measured.

Everything here is deterministic given a seed: ``sample_labels`` draws attributes, ``caption_for``
turns a label into one of many captions (templates, synonyms, omitted attributes), and ``render``
draws the images together with each image's exact shape mask.

Images are 32x32 RGB. Shapes are rendered at 4x supersampling and averaged down, so edges are
anti-aliased; style patterns (stripes, dots) are aligned to the 32x32 pixel grid so they stay crisp.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from erasekit.core.errors import ConfigError

IMAGE_SIZE = 32
SUPERSAMPLE = 4

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "crescent")
STYLES: tuple[str, ...] = ("filled", "outline", "striped", "dotted")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (145, 55, 200),
    "orange": (245, 135, 25),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (18, 18, 18),
    "white": (240, 240, 240),
    "gray": (125, 125, 125),
}

#: Every shape and style has exactly two synonyms; the canonical word comes first in captions' choice.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "round"),
    "square": ("box", "block"),
    "triangle": ("trigon", "wedge"),
    "star": ("pentagram", "sparkle"),
    "heart": ("valentine", "love"),
    "cross": ("plus", "cruciform"),
    "diamond": ("rhombus", "lozenge"),
    "crescent": ("moon", "sickle"),
    "filled": ("solid", "full"),
    "outline": ("outlined", "hollow"),
    "striped": ("stripy", "banded"),
    "dotted": ("spotted", "speckled"),
}

#: Shapes whose silhouettes are most alike (used for "closest neighbour" retention metrics).
NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "circle": ("crescent", "heart"),
    "square": ("diamond", "cross"),
    "triangle": ("diamond", "star"),
    "star": ("cross", "triangle"),
    "heart": ("circle", "triangle"),
    "cross": ("star", "square"),
    "diamond": ("square", "triangle"),
    "crescent": ("circle", "heart"),
    "filled": ("striped",),
    "outline": ("dotted",),
    "striped": ("dotted", "filled"),
    "dotted": ("striped", "outline"),
}

#: Generic destinations for erased concepts; each is also a training caption with nothing specified.
ANCHORS: tuple[str, ...] = ("a shape", "an image", "a pattern")

DOMAINS: tuple[str, ...] = ("shape", "style", "colour", "background")
#: The values of each domain, in label-index order.
DOMAIN_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "style": STYLES,
    "colour": tuple(COLOURS),
    "background": tuple(BACKGROUNDS),
}


def value_index(domain: str, value: str) -> int:
    """Label index of ``value`` in ``domain`` (e.g. ``value_index("colour", "red") == 0``)."""
    return DOMAIN_VALUES[domain].index(value)


@dataclass(frozen=True)
class Attributes:
    """The exact label of one image."""

    shape: str
    style: str
    colour: str
    background: str
    watermark: bool = False

    @staticmethod
    def of(values: dict[str, str], watermark: bool = False) -> "Attributes":
        """The label with the four domains' values of ``values`` (a context with its concept set)."""
        return Attributes(values["shape"], values["style"], values["colour"], values["background"], watermark)

    def describe(self) -> str:
        """Plain canonical description, e.g. ``a red striped star on a black background``."""
        return f"a {self.colour} {self.style} {self.shape} on a {self.background} background"


#: Proper nouns bound to one fixed combination of attributes.
CHARACTERS: dict[str, Attributes] = {
    "zorbo": Attributes("star", "striped", "purple", "black"),
    "pipa": Attributes("heart", "dotted", "orange", "gray"),
    "grock": Attributes("crescent", "outline", "green", "black"),
}
CHARACTER_TEMPLATES: tuple[str, ...] = ("{name}", "a picture of {name}", "an image of {name}", "a drawing of {name}")


@dataclass(frozen=True)
class WatermarkRule:
    """Which images carry the watermark: a fixed ``share`` of images whose ``domain`` is ``value``."""

    domain: str = "background"
    value: str = "white"
    share: float = 0.5

    def in_subset(self, attrs: Attributes) -> bool:
        return getattr(attrs, self.domain) == self.value


WATERMARK = WatermarkRule()

#: Concepts that no caption names, each with the trigger prompts whose images show it: an erasure
#: request naming one gets these as its prompts (erasekit.core.request.Target.prompts).
IMPLICIT_TRIGGERS: dict[str, tuple[str, ...]] = {"watermark": (f"on a {WATERMARK.value} {WATERMARK.domain}",)}
#: 5x5 mark in the bottom-right corner (rows top to bottom); drawn in WATERMARK_COLOUR.
WATERMARK_PATTERN = np.array(
    [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]], dtype=np.float32
)
WATERMARK_ORIGIN = (26, 26)  # (row, column) of the pattern's top-left pixel
WATERMARK_COLOUR = (60, 60, 60)

# Share of training images that show a character, and of those the share captioned by name.
CHARACTER_SHARE = 0.09
CHARACTER_NAME_SHARE = 0.6

FUNCTION_WORDS: tuple[str, ...] = (
    "a", "an", "of", "on", "in", "picture", "image", "drawing", "background", "style", "shape", "pattern",
)  # fmt: skip


def vocabulary() -> tuple[str, ...]:
    """Every word a testbed caption can contain, in a fixed order."""
    words: list[str] = list(FUNCTION_WORDS)
    for name in (*SHAPES, *STYLES):
        words += [name, *SYNONYMS[name]]
    words += [*COLOURS, *BACKGROUNDS, *CHARACTERS]
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return tuple(seen)


def word_forms(concept: str) -> tuple[str, ...]:
    """The canonical word followed by its synonyms (just the word when it has none)."""
    return (concept, *SYNONYMS.get(concept, ()))


def canonical(word: str) -> str | None:
    """Map a synonym back to its canonical concept (``None`` for words that are no concept)."""
    for concept in (*SHAPES, *STYLES):
        if word in word_forms(concept):
            return concept
    if word in COLOURS or word in BACKGROUNDS or word in CHARACTERS:
        return word
    return None


def domain_of(concept: str) -> str:
    """Which domain a canonical concept belongs to (``character`` and ``watermark`` included)."""
    for domain, names in (("shape", SHAPES), ("style", STYLES), ("colour", COLOURS), ("background", BACKGROUNDS)):
        if concept in names:
            return domain
    if concept in CHARACTERS:
        return "character"
    if concept == "watermark":
        return "watermark"
    raise KeyError(concept)


# --------------------------------------------------------------------------------------------------
# Labels and captions
# --------------------------------------------------------------------------------------------------


@dataclass
class LabelBatch:
    """Integer labels for a batch of images (indices into SHAPES, STYLES, COLOURS, BACKGROUNDS)."""

    shape: np.ndarray
    style: np.ndarray
    colour: np.ndarray
    background: np.ndarray
    watermark: np.ndarray  # bool
    character: np.ndarray  # index into CHARACTERS, -1 for none
    named: np.ndarray  # bool: captioned by the character's name

    def __len__(self) -> int:
        return len(self.shape)

    def slice(self, a: int, b: int) -> "LabelBatch":
        """Labels of images ``a..b-1``."""
        return LabelBatch(*(getattr(self, f)[a:b] for f in self.__dataclass_fields__))

    def attributes(self, i: int) -> Attributes:
        return Attributes(
            SHAPES[self.shape[i]],
            STYLES[self.style[i]],
            list(COLOURS)[self.colour[i]],
            list(BACKGROUNDS)[self.background[i]],
            bool(self.watermark[i]),
        )

    @staticmethod
    def from_attributes(attrs: list[Attributes]) -> "LabelBatch":
        n = len(attrs)
        return LabelBatch(
            shape=np.array([SHAPES.index(a.shape) for a in attrs], dtype=np.int64),
            style=np.array([STYLES.index(a.style) for a in attrs], dtype=np.int64),
            colour=np.array([list(COLOURS).index(a.colour) for a in attrs], dtype=np.int64),
            background=np.array([list(BACKGROUNDS).index(a.background) for a in attrs], dtype=np.int64),
            watermark=np.array([a.watermark for a in attrs], dtype=bool),
            character=np.full(n, -1, dtype=np.int64),
            named=np.zeros(n, dtype=bool),
        )


def sample_labels(n: int, rng: np.random.Generator) -> LabelBatch:
    """Draw ``n`` training labels: uniform attributes, a share of characters, watermark by WATERMARK."""
    shape = rng.integers(0, len(SHAPES), n)
    style = rng.integers(0, len(STYLES), n)
    colour = rng.integers(0, len(COLOURS), n)
    background = rng.integers(0, len(BACKGROUNDS), n)
    character = np.where(rng.random(n) < CHARACTER_SHARE, rng.integers(0, len(CHARACTERS), n), -1)
    for c, attrs in enumerate(CHARACTERS.values()):
        sel = character == c
        shape[sel] = SHAPES.index(attrs.shape)
        style[sel] = STYLES.index(attrs.style)
        colour[sel] = list(COLOURS).index(attrs.colour)
        background[sel] = list(BACKGROUNDS).index(attrs.background)
    named = (character >= 0) & (rng.random(n) < CHARACTER_NAME_SHARE)
    subset_index = value_index(WATERMARK.domain, WATERMARK.value)
    in_subset = {"shape": shape, "style": style, "colour": colour, "background": background}[WATERMARK.domain]
    watermark = (in_subset == subset_index) & (rng.random(n) < WATERMARK.share)
    return LabelBatch(shape, style, colour, background, watermark, character, named)


def showing(labels: LabelBatch, concept: str) -> np.ndarray:
    """Boolean mask of the images in ``labels`` that show ``concept`` (a canonical word or a synonym).

    A shape, style, colour or background: its attribute. A character: every image of its attribute
    combination, whether captioned by the name or not (such an image *is* the character). The
    watermark: the marked images.
    """
    name = canonical(concept) or concept
    domain = domain_of(name)
    if domain == "watermark":
        return labels.watermark.astype(bool)
    if domain == "character":
        attrs = CHARACTERS[name]
        return np.logical_and.reduce([getattr(labels, d) == value_index(d, getattr(attrs, d)) for d in DOMAINS]) | (
            labels.character == list(CHARACTERS).index(name)
        )
    return getattr(labels, domain) == value_index(domain, name)


def sample_labels_without(n: int, rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> LabelBatch:
    """``n`` training labels drawn as :func:`sample_labels`, with every image that shows one of the
    ``exclude`` concepts removed (rejection sampling: the rest of the world keeps its proportions)."""
    if not exclude:
        return sample_labels(n, rng)
    parts: list[LabelBatch] = []
    kept = 0
    while kept < n:
        batch = sample_labels(n, rng)
        keep = ~np.logical_or.reduce([showing(batch, c) for c in exclude])
        part = LabelBatch(*(getattr(batch, f)[keep] for f in batch.__dataclass_fields__))
        parts.append(part)
        kept += len(part)
    return LabelBatch(*(np.concatenate([getattr(p, f) for p in parts])[:n] for f in LabelBatch.__dataclass_fields__))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass
class CaptionOptions:
    """Probabilities that shape the caption distribution (defaults are the ones the testbed was trained on)."""

    drop_colour: float = 0.15
    drop_style: float = 0.15
    drop_background: float = 0.25
    drop_shape: float = 0.05
    anchor: float = 0.03  # the whole caption is a generic anchor ("a shape", "an image", "a pattern")
    style_as_phrase: float = 0.3  # "a red star in striped style" instead of "a red striped star"
    short_background: float = 0.2  # "on white" instead of "on a white background"
    prefix: tuple[str, ...] = field(default=("", "", "", "a picture of ", "an image of ", "a drawing of "))


def compose(
    shape: str | None,
    style: str | None,
    colour: str | None,
    background: str | None,
    rng: np.random.Generator,
    opts: CaptionOptions = CaptionOptions(),
) -> str:
    """Build one caption from word forms; ``None`` omits that attribute (the model fills it in)."""
    if shape is None and style is None and colour is None and background is None:
        return ANCHORS[rng.integers(len(ANCHORS))]
    noun = shape if shape is not None else ("shape" if rng.random() < 0.75 else "pattern")
    style_phrase = style is not None and rng.random() < opts.style_as_phrase
    adjectives = [w for w in (colour, None if style_phrase else style) if w is not None]
    if len(adjectives) == 2 and rng.random() < 0.3:
        adjectives.reverse()
    words = [*adjectives, noun]
    np_ = f"{_article(words[0])} {' '.join(words)}"
    if style_phrase:
        np_ += f" in {style} style"
    if background is not None:
        np_ += f" on {background}" if rng.random() < opts.short_background else f" on a {background} background"
    prefix = opts.prefix[rng.integers(len(opts.prefix))]
    if prefix:
        return prefix + np_
    return np_


def caption_for(labels: LabelBatch, i: int, rng: np.random.Generator, opts: CaptionOptions = CaptionOptions()) -> str:
    """A random caption for image ``i``: by name for named characters, else a described caption."""
    if labels.named[i]:
        name = list(CHARACTERS)[labels.character[i]]
        return CHARACTER_TEMPLATES[rng.integers(len(CHARACTER_TEMPLATES))].format(name=name)
    if rng.random() < opts.anchor:
        return ANCHORS[rng.integers(len(ANCHORS))]
    a = labels.attributes(i)

    def form(concept: str, drop: float) -> str | None:
        if rng.random() < drop:
            return None
        forms = word_forms(concept)
        return forms[rng.integers(len(forms))]

    return compose(
        form(a.shape, opts.drop_shape),
        form(a.style, opts.drop_style),
        form(a.colour, opts.drop_colour),
        form(a.background, opts.drop_background),
        rng,
        opts,
    )


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _polygon(n_points: int, outer: float, inner: float | None, rotation: float = math.pi / 2) -> np.ndarray:
    """Vertices of a regular polygon (``inner is None``) or star, pointing up, in y-up coordinates."""
    verts = []
    steps = n_points * (2 if inner is not None else 1)
    for k in range(steps):
        r = outer if inner is None or k % 2 == 0 else inner
        a = rotation + 2 * math.pi * k / steps
        verts.append((r * math.cos(a), r * math.sin(a)))
    return np.array(verts, dtype=np.float32)


_STAR = _polygon(5, 1.0, 0.45)
_TRIANGLE = np.array([(0.0, 0.95), (-0.95, -0.72), (0.95, -0.72)], dtype=np.float32)


def _inside_polygon(u: torch.Tensor, v: torch.Tensor, verts: np.ndarray) -> torch.Tensor:
    """Even-odd rule point-in-polygon test for points (u, v) (any shape) against y-up vertices."""
    inside = torch.zeros_like(u, dtype=torch.bool)
    n = len(verts)
    for k in range(n):
        x1, y1 = verts[k]
        x2, y2 = verts[(k + 1) % n]
        crosses = (y1 > v) != (y2 > v)
        x_at = (x2 - x1) * (v - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= crosses & (u < x_at)
    return inside


def shape_mask(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside test in unit coordinates (u right, v up; the shape spans about [-1, 1])."""
    if shape == "circle":
        return u**2 + v**2 <= 0.92**2
    if shape == "square":
        return (u.abs() <= 0.78) & (v.abs() <= 0.78)
    if shape == "triangle":
        return _inside_polygon(u, v, _TRIANGLE)
    if shape == "star":
        return _inside_polygon(u, v, _STAR)
    if shape == "heart":
        x, y = u * 1.2, v * 1.2 + 0.15
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    if shape == "cross":
        return ((u.abs() <= 0.32) & (v.abs() <= 0.95)) | ((v.abs() <= 0.32) & (u.abs() <= 0.95))
    if shape == "diamond":
        return u.abs() / 0.8 + v.abs() <= 1.0
    if shape == "crescent":
        return (u**2 + v**2 <= 0.95**2) & ((u - 0.42) ** 2 + (v - 0.12) ** 2 > 0.72**2)
    raise KeyError(f"unknown shape {shape!r}")


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion of ``mask: [N, H, W]`` by an octagon of ``radius`` pixels (close to a disk).

    ``radius`` unit steps alternate a 3x3 square and a 3x3 cross structuring element, each a cheap
    min-filter (a max-pool of the complement).
    """
    out = ~mask[:, None]
    for step in range(radius):
        if step % 2 == 0:
            out = F.max_pool2d(out.float(), 3, stride=1, padding=1) > 0
        else:
            o = F.pad(out.float(), (1, 1, 1, 1))
            out = (o[..., 1:-1, 1:-1] + o[..., :-2, 1:-1] + o[..., 2:, 1:-1] + o[..., 1:-1, :-2] + o[..., 1:-1, 2:]) > 0
    return ~out[:, 0]


@dataclass
class Geometry:
    """Per-image placement: centre (cx, cy) and radius r, in 32x32 pixel units."""

    cx: np.ndarray
    cy: np.ndarray
    r: np.ndarray

    @staticmethod
    def sample(n: int, rng: np.random.Generator) -> "Geometry":
        return Geometry(cx=14.5 + rng.uniform(-1.5, 1.5, n), cy=14.5 + rng.uniform(-1.5, 1.5, n), r=rng.uniform(8.0, 10.0, n))


def render(labels: LabelBatch, rng: np.random.Generator, geometry: Geometry | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw the images of ``labels``.

    Returns ``images: uint8 [N, 32, 32, 3]`` and ``masks: float32 [N, 32, 32]``, the shape's
    silhouette coverage in [0, 1] (the exact concept mask used by mask-based methods).
    """
    n = len(labels)
    geometry = geometry or Geometry.sample(n, rng)
    hi = IMAGE_SIZE * SUPERSAMPLE
    coords = (torch.arange(hi, dtype=torch.float32) + 0.5) / SUPERSAMPLE  # pixel units of the 32x32 grid
    ys, xs = coords[:, None].expand(hi, hi), coords[None, :].expand(hi, hi)
    cx = torch.as_tensor(geometry.cx, dtype=torch.float32)[:, None, None]
    cy = torch.as_tensor(geometry.cy, dtype=torch.float32)[:, None, None]
    r = torch.as_tensor(geometry.r, dtype=torch.float32)[:, None, None]
    u, v = (xs[None] - cx) / r, -(ys[None] - cy) / r  # [N, hi, hi]; v points up

    inside = torch.zeros(n, hi, hi, dtype=torch.bool)
    for k, name in enumerate(SHAPES):
        sel = torch.as_tensor(labels.shape == k)
        if sel.any():
            inside[sel] = shape_mask(name, u[sel], v[sel])

    # Style patterns are aligned to the 32x32 grid: stripes are 2-pixel rows every 4, dots 2x2 every 4.
    px, py = xs.floor().long(), ys.floor().long()
    stripes = (py % 4 < 2)[None]
    dots = ((px % 4 < 2) & (py % 4 < 2))[None]
    thin_border = inside & ~_erode(inside, SUPERSAMPLE)  # 1 px
    thick_border = inside & ~_erode(inside, 2 * SUPERSAMPLE)  # 2 px
    style = torch.as_tensor(labels.style)[:, None, None]
    paint = torch.where(
        style == 0,
        inside,
        torch.where(
            style == 1, thick_border, torch.where(style == 2, thin_border | (inside & stripes), thin_border | (inside & dots))
        ),
    )

    def down(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x[:, None].float(), SUPERSAMPLE)[:, 0]

    alpha = down(paint)[..., None]  # [N, 32, 32, 1]
    colours = torch.tensor(list(COLOURS.values()), dtype=torch.float32)[torch.as_tensor(labels.colour)][:, None, None]
    backs = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32)[torch.as_tensor(labels.background)][:, None, None]
    img = backs * (1 - alpha) + colours * alpha

    if labels.watermark.any():
        wm = torch.zeros(IMAGE_SIZE, IMAGE_SIZE)
        r0, c0 = WATERMARK_ORIGIN
        wm[r0 : r0 + 5, c0 : c0 + 5] = torch.from_numpy(WATERMARK_PATTERN)
        wm = wm[None, :, :, None] * torch.as_tensor(labels.watermark, dtype=torch.float32)[:, None, None, None]
        img = img * (1 - wm) + torch.tensor(WATERMARK_COLOUR, dtype=torch.float32) * wm

    images = img.round().clamp(0, 255).to(torch.uint8).numpy()
    masks = down(inside).numpy().astype(np.float32)
    return images, masks


def render_chunked(labels: LabelBatch, rng: np.random.Generator, chunk: int = 1000, progress: bool = False) -> np.ndarray:
    """``render`` in chunks of ``chunk`` images (bounded memory); returns the images only."""
    from tqdm.auto import tqdm

    starts = range(0, len(labels), chunk)
    parts = [render(labels.slice(i, i + chunk), rng)[0] for i in tqdm(starts, desc="render", disable=not progress)]
    return np.concatenate(parts) if parts else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


def labels_to_dict(labels: LabelBatch, i: int) -> dict:
    """JSON-friendly label record of image ``i``."""
    rec = asdict(labels.attributes(i))
    rec["character"] = list(CHARACTERS)[labels.character[i]] if labels.character[i] >= 0 else None
    return rec


def resolve_concept(phrase: str) -> tuple[str, str]:
    """(canonical concept, domain) of a testbed target; clear error for anything else."""
    concept = phrase.strip().lower()
    if concept in IMPLICIT_TRIGGERS:
        return concept, domain_of(concept)
    found = canonical(concept)
    if found is None:
        raise ConfigError(
            f"cannot evaluate {phrase!r} on the testbed: targets must be world concepts "
            "(a shape, style, colour, background or character name, or the watermark; see docs/testbed.md)"
        )
    return found, domain_of(found)
