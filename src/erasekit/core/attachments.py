"""Modules an erasure *adds* to a model instead of changing its weights (Receler's erasers, SPM's
adapters), installed with forward hooks.

An :class:`Attachment` knows how to install itself on a pipeline (returning hook handles, so that
``Erasure.remove`` takes it off exactly), and how to save and restore itself as a JSON config plus
tensors. Kinds register by name so ``Erasure.load`` can rebuild them. Attachments cannot be merged
into plain weights: ``erasekit export`` refuses them with a clear error, and they are applied with
``Erasure.load(dir).apply(pipe)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch.utils.hooks import RemovableHandle

from erasekit.core.errors import IncompatibleErasureError

ATTACHMENT_KINDS: dict[str, type["Attachment"]] = {}


def register_attachment(cls: type["Attachment"]) -> type["Attachment"]:
    if cls.kind in ATTACHMENT_KINDS:
        raise ValueError(f"attachment kind {cls.kind!r} is registered twice")
    ATTACHMENT_KINDS[cls.kind] = cls
    return cls


class Attachment(ABC):
    kind: ClassVar[str] = ""

    @abstractmethod
    def install(self, pipe) -> list[RemovableHandle]:
        """Hook the attachment into ``pipe``; return the handles that take it off again."""

    @abstractmethod
    def config(self) -> dict:
        """JSON-able description needed to rebuild the attachment."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the attachment (saved as safetensors)."""

    @classmethod
    @abstractmethod
    def restore(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "Attachment":
        """Inverse of :meth:`config` + :meth:`tensors`."""


def restore_attachment(kind: str, config: dict, tensors: dict[str, torch.Tensor]) -> Attachment:
    if kind not in ATTACHMENT_KINDS:
        raise IncompatibleErasureError(f"unknown attachment kind {kind!r}; is this erasure from a newer erasekit?")
    return ATTACHMENT_KINDS[kind].restore(config, tensors)


def find_module(pipe, component: str, name: str, what: str) -> str:
    """The path ``component.dotted.path`` of the one module of ``component`` whose own name is ``name``
    (transformers 5 flattens ``text_model.final_layer_norm`` to ``final_layer_norm``, so the prefix
    varies); ``what`` names the caller in the error when there is none or more than one."""
    root = getattr(pipe, component, None)
    found = [n for n, _ in root.named_modules() if n.rsplit(".", 1)[-1] == name] if isinstance(root, torch.nn.Module) else []
    if len(found) != 1:
        raise IncompatibleErasureError(f"{what}: the model's {component} has no single module {name!r}")
    return f"{component}.{found[0]}"


def get_module(pipe, path: str) -> torch.nn.Module:
    """The module ``component.dotted.path`` of a pipeline."""
    component, _, rest = path.partition(".")
    root = getattr(pipe, component, None)
    if not isinstance(root, torch.nn.Module):
        raise IncompatibleErasureError(f"the model has no component {component!r}; was the erasure made for another model?")
    try:
        return root.get_submodule(rest) if rest else root
    except AttributeError:
        raise IncompatibleErasureError(f"the model has no module {path}; was the erasure made for another model?") from None
