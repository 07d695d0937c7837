"""The testbed judge: an independent small CNN with one head per label.

It is trained only on images drawn by the world's renderer (never on the generative model's outputs,
never sharing its weights), with augmentations that mimic generator artefacts (blur, noise, slight
colour shifts), and decides every erasure metric on the testbed. Heads: shape, style, colour,
background, watermark (present / absent).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from erasekit.core.io import load_tensors, save_tensors
from erasekit.testbeds.image import world

HEADS: dict[str, int] = {
    "shape": len(world.SHAPES),
    "style": len(world.STYLES),
    "colour": len(world.COLOURS),
    "background": len(world.BACKGROUNDS),
    "watermark": 2,
}
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "shape": world.SHAPES,
    "style": world.STYLES,
    "colour": tuple(world.COLOURS),
    "background": tuple(world.BACKGROUNDS),
    "watermark": ("absent", "present"),
}


class TestbedClassifier(nn.Module):
    """``images: float [N, 3, 32, 32]`` in [-1, 1] -> ``{head: logits [N, classes]}``."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(3, 32), nn.MaxPool2d(2),  # 16x16
            block(32, 48), block(48, 48), nn.MaxPool2d(2),  # 8x8
            block(48, 96), nn.MaxPool2d(2),  # 4x4
        )  # fmt: skip
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(96 * 16, 256), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({name: nn.Linear(256, n) for name, n in HEADS.items()})

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[N, 256]`` (used for Fréchet distances between image sets)."""
        return self.trunk(self.features(images))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.embed(images)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, np.ndarray]:
        """Predicted class index per head for ``images`` (uint8 [N,32,32,3] or float [N,3,32,32] in [-1,1])."""
        self.eval()
        x = to_model_input(images)
        out: dict[str, list[np.ndarray]] = {k: [] for k in HEADS}
        for i in range(0, len(x), batch_size):
            logits = self(x[i : i + batch_size])
            for k, v in logits.items():
                out[k].append(v.argmax(-1).numpy())
        return {k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for k, v in out.items()}


def to_model_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 HWC images -> float NCHW in [-1, 1]; float NCHW input passes through. The result is
    contiguous: a channels-last view gives features that depend on where the array lies in memory
    (a copy of the same images differed in the 7th digit on the CPU), and sharded evaluation needs
    the same numbers from gathered copies (:mod:`erasekit.core.parallel`)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        return (images.permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()
    return images.float().contiguous()


def label_targets(labels: world.LabelBatch) -> dict[str, torch.Tensor]:
    return {
        "shape": torch.as_tensor(labels.shape),
        "style": torch.as_tensor(labels.style),
        "colour": torch.as_tensor(labels.colour),
        "background": torch.as_tensor(labels.background),
        "watermark": torch.as_tensor(labels.watermark.astype(np.int64)),
    }


def classifier_labels(n: int, rng: np.random.Generator, watermark_share: float = 0.3) -> world.LabelBatch:
    """Labels for judge training: uniform attributes, watermark on any background (the judge must see
    a watermark wherever a model might draw one, not only where the world puts it)."""
    labels = world.sample_labels(n, rng)
    labels.watermark = rng.random(n) < watermark_share
    return labels


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Generator-like artefacts on ``x: [N, 3, 32, 32]`` in [-1, 1]: blur, noise, colour and brightness shifts."""
    n = len(x)
    blur_w = torch.rand(n, 1, 1, 1, generator=gen) * 0.6
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    x = x * (1 - blur_w) + blurred * blur_w
    x = x + torch.randn(n, 3, 1, 1, generator=gen) * 0.04 + torch.randn(n, 1, 1, 1, generator=gen) * 0.04
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * 0.08
    return x.clamp(-1, 1)


@dataclass
class ClassifierTrainConfig:
    n_images: int = 40_000  # rendered once, re-augmented every epoch
    steps: int = 2_000
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 2


def train_classifier(cfg: ClassifierTrainConfig = ClassifierTrainConfig(), progress: bool = True) -> TestbedClassifier:
    """Train the judge from scratch on rendered images (a few minutes on 2 CPU cores)."""
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    labels = classifier_labels(cfg.n_images, rng)
    images = world.render_chunked(labels, rng)
    x_all = to_model_input(images)
    y_all = label_targets(labels)
    model = TestbedClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    model.train()
    bar = tqdm(range(cfg.steps), desc="classifier", disable=not progress, mininterval=2)
    for _ in bar:
        idx = torch.randint(0, cfg.n_images, (cfg.batch_size,), generator=gen)
        logits = model(augment(x_all[idx], gen))
        loss = sum(F.cross_entropy(logits[k], y_all[k][idx]) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    model.eval()
    return model


def evaluate_classifier(model: TestbedClassifier, n: int = 4000, seed: int = 12345) -> dict[str, float]:
    """Per-head accuracy on fresh rendered images (a seed never used in training)."""
    rng = np.random.default_rng(seed)
    labels = classifier_labels(n, rng)
    images = world.render_chunked(labels, rng)
    pred = model.predict(images)
    targets = label_targets(labels)
    return {k: float((pred[k] == targets[k].numpy()).mean()) for k in HEADS}


def save_classifier(model: TestbedClassifier, path: str | Path) -> None:
    save_tensors(path, model.state_dict(), metadata={"format": "erasekit-testbed-classifier", "heads": ",".join(HEADS)})


def load_classifier(path: str | os.PathLike) -> TestbedClassifier:
    model = TestbedClassifier()
    model.load_state_dict(load_tensors(path))
    model.eval()
    return model
