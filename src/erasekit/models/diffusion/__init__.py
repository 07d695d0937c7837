"""Model families: one small adapter each (see base.py). ``get_adapter(pipe)`` picks the right one."""

from __future__ import annotations

from erasekit.core.errors import UnsupportedModelError
from erasekit.models.diffusion.base import Encoded, FamilyAdapter, Projection, Segment
from erasekit.models.diffusion.transformer import FluxFamily, StableDiffusion3Family
from erasekit.models.diffusion.unet import StableDiffusionFamily, StableDiffusionXLFamily

ADAPTERS: tuple[type[FamilyAdapter], ...] = (StableDiffusionXLFamily, StableDiffusionFamily, StableDiffusion3Family, FluxFamily)


def get_adapter(pipe) -> FamilyAdapter:
    """The adapter of ``pipe``'s family; a clear error for pipelines erasekit does not know."""
    for cls in ADAPTERS:
        if cls.matches(pipe):
            adapter = cls()
            if not adapter.text_projections(pipe):
                raise UnsupportedModelError(f"{type(pipe).__name__} looks like {cls.name} but has no text projections to edit")
            return adapter
    names = ", ".join(c.name for c in ADAPTERS)
    raise UnsupportedModelError(f"{type(pipe).__name__} is not a supported model family (supported: {names})")


__all__ = ["ADAPTERS", "Encoded", "FamilyAdapter", "Projection", "Segment", "get_adapter"]
