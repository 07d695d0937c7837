"""The result of an erasure: the changed tensors and where they came from.

An :class:`Erasure` holds the *new values* of only the tensors a method changed (keys such as
``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight``), plus provenance:
method, parameters, request, base model id, a hash of the original values of exactly those tensors,
timings and the erasekit version.

``apply(pipe)`` writes the new values into ``pipe`` (that is the explicit request to modify it) and
remembers the originals, so ``remove(pipe)`` restores them bit for bit. Applying to a model whose
original tensors differ from the ones the erasure was computed on is an error unless ``force``.
On disk: ``erasure.json`` + ``weights.safetensors`` in one directory, written atomically.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import IncompatibleErasureError, MissingFileError
from .io import atomic_path, load_tensors, read_json, save_tensors, write_json
from .request import ErasureRequest

FORMAT = "erasekit-erasure-v1"


def get_tensor(pipe, key: str) -> torch.nn.Parameter:
    """The parameter ``component.dotted.path`` of a pipeline (e.g. ``unet.conv_in.weight``)."""
    component, _, rest = key.partition(".")
    module = getattr(pipe, component, None)
    if module is None or not isinstance(module, torch.nn.Module):
        raise IncompatibleErasureError(f"the model has no component {component!r} (needed for {key})")
    try:
        return module.get_parameter(rest)
    except AttributeError:
        raise IncompatibleErasureError(f"the model has no tensor {key}; was the erasure made for another model family?") from None


def hash_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes of ``tensors`` (sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Erasure:
    method: str
    params: dict
    request: ErasureRequest
    base_model: str
    base_hash: str
    weights: dict[str, torch.Tensor]
    family: str = ""
    timings: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    version: str = ""
    _originals: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    # -- applying ------------------------------------------------------------------------------------
    def originals_of(self, pipe) -> dict[str, torch.Tensor]:
        return {k: get_tensor(pipe, k).detach() for k in self.weights}

    def check_compatible(self, pipe) -> None:
        current = self.originals_of(pipe)
        for k, t in current.items():
            if t.shape != self.weights[k].shape:
                raise IncompatibleErasureError(f"{k} has shape {tuple(t.shape)} in the model but {tuple(self.weights[k].shape)} in the erasure")
        if hash_tensors(current) != self.base_hash:
            raise IncompatibleErasureError(
                f"the model's weights differ from those the erasure was computed on ({self.base_model}); "
                "is it another model, or is an erasure already applied? Pass force=True (--force) to apply anyway"
            )

    @torch.no_grad()
    def apply(self, pipe, force: bool = False):
        """Write the erased weights into ``pipe`` (in place) and return it; see :meth:`remove`."""
        if not force:
            self.check_compatible(pipe)
        self._originals = {k: t.clone() for k, t in self.originals_of(pipe).items()}
        for k, v in self.weights.items():
            p = get_tensor(pipe, k)
            p.copy_(v.to(device=p.device, dtype=p.dtype))
        return pipe

    @torch.no_grad()
    def remove(self, pipe):
        """Restore the exact weights ``pipe`` had before :meth:`apply`."""
        if not self._originals:
            raise IncompatibleErasureError("this erasure has not been applied to a model in this session; nothing to remove")
        for k, v in self._originals.items():
            get_tensor(pipe, k).copy_(v)
        self._originals = {}
        return pipe

    # -- describing ----------------------------------------------------------------------------------
    def changed_tensors(self) -> list[str]:
        return sorted(self.weights)

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.weights.values())

    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "method": self.method,
            "params": self.params,
            "request": self.request.to_dict(),
            "base_model": self.base_model,
            "base_hash": self.base_hash,
            "family": self.family,
            "changed_tensors": self.changed_tensors(),
            "delta_bytes": self.num_bytes(),
            "timings": self.timings,
            "info": self.info,
            "erasekit_version": self.version,
        }

    # -- files ---------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            save_tensors(tmp / "weights.safetensors", self.weights, metadata={"format": FORMAT, "method": self.method})
            write_json(tmp / "erasure.json", self.metadata())
        return directory

    @staticmethod
    def load(directory: str | os.PathLike) -> "Erasure":
        directory = Path(directory)
        meta_path, weights_path = directory / "erasure.json", directory / "weights.safetensors"
        if not meta_path.is_file() or not weights_path.is_file():
            raise MissingFileError(f"{directory} is not an erasure directory (expected erasure.json and weights.safetensors)")
        meta = read_json(meta_path)
        if meta.get("format") != FORMAT:
            raise IncompatibleErasureError(f"{meta_path} has format {meta.get('format')!r}; this erasekit reads {FORMAT!r}")
        return Erasure(
            method=meta["method"],
            params=meta["params"],
            request=ErasureRequest.from_dict(meta["request"]),
            base_model=meta["base_model"],
            base_hash=meta["base_hash"],
            weights=load_tensors(weights_path),
            family=meta.get("family", ""),
            timings=meta.get("timings", {}),
            info=meta.get("info", {}),
            version=meta.get("erasekit_version", ""),
        )
