"""A fake 'generator' that draws exactly what a testbed prompt says, and a judge that reads its labels.

They test bookkeeping (gate, metrics) independently of any trained model.
"""

from types import SimpleNamespace

import numpy as np
import torch

from erasekit.testbeds.image import world
from erasekit.testbeds.image.classifier import LABEL_NAMES


def parse_prompt(prompt: str) -> world.Attributes:
    """Attributes named by a testbed prompt (synonyms and character names understood; defaults fill gaps)."""
    words = prompt.lower().split()
    for name, attrs in world.CHARACTERS.items():
        if name in words:
            return attrs
    found = {"shape": "circle", "style": "filled", "colour": "red", "background": "black"}
    for w in words:
        concept = world.canonical(w)
        if concept is not None and concept not in world.CHARACTERS:
            found[world.domain_of(concept)] = concept
    return world.Attributes(**found)


class WorldPipe:
    """Renders the attributes a prompt asks for; ``corrupt(prompt, attrs, seed) -> attrs`` injects faults.

    White-background images carry the watermark for even seeds (share 0.5, as in training)."""

    device = torch.device("cpu")
    name_or_path = None
    tokenizer = None

    def __init__(self, corrupt=None):
        self.corrupt = corrupt or (lambda prompt, a, seed: a)
        self.drawn: list[world.Attributes] = []

    def __call__(self, prompt, generator, num_inference_steps, guidance_scale, output_type, **_):
        attrs = []
        for p, g in zip(prompt, generator):
            seed = g.initial_seed()
            a = parse_prompt(p)
            a = world.Attributes(a.shape, a.style, a.colour, a.background, world.WATERMARK.in_subset(a) and seed % 2 == 0)
            attrs.append(self.corrupt(p, a, seed))
        self.drawn += attrs
        images, _ = world.render(world.LabelBatch.from_attributes(attrs), np.random.default_rng(0))
        return SimpleNamespace(images=images.astype(np.float32) / 255)


class OracleJudge:
    """Returns the labels the fake pipe drew most recently for as many images as asked."""

    def __init__(self, pipe):
        self.pipe = pipe

    def predict(self, images):
        drawn = self.pipe.drawn[-len(images) :]
        out = {d: np.array([LABEL_NAMES[d].index(getattr(a, d)) for a in drawn]) for d in world.DOMAINS}
        out["watermark"] = np.array([int(a.watermark) for a in drawn])
        return out

    def embed(self, x):
        return torch.nn.functional.avg_pool2d(x.float(), 8).flatten(1)
