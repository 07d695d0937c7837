"""The result of an erasure: the changed tensors and where they came from.

An :class:`Erasure` holds the *new values* of only the tensors a method changed (keys such as
``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight``), plus provenance:
method, parameters, request, base model id, a hash of the original values of exactly those tensors,
timings and the erasekit version.

``apply(pipe)`` writes the new values into ``pipe`` (that is the explicit request to modify it) and
remembers the originals, so ``remove(pipe)`` restores them bit for bit. Applying to a model whose
original tensors differ from the ones the erasure was computed on is an error unless ``force``.
On disk: ``erasure.json`` + ``weights.safetensors`` in one directory, written atomically.

A LoRA erasure (fine-tuning methods with ``lora_rank``) holds low-rank factors instead of full
tensors (``lora``, diffusers format, scale 1): applying adds ``B A`` to each layer's weight, and the
directory also holds ``pytorch_lora_weights.safetensors``, so ``pipe.load_lora_weights(dir)`` loads it.
An erasure may also carry an :class:`~erasekit.core.attachments.Attachment` (modules added with
forward hooks, e.g. Receler's erasers): ``apply`` installs it, ``remove`` takes it off.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .attachments import Attachment, restore_attachment
from .errors import IncompatibleErasureError, MissingFileError
from .io import atomic_path, load_tensors, read_json, save_tensors, write_json
from .request import ErasureRequest

LORA_FILE = "pytorch_lora_weights.safetensors"  # the diffusers LoRA file name (load_lora_weights reads it)
ATTACHMENT_FILE = "attachment.safetensors"


def lora_deltas(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{weight key: B @ A}`` of a diffusers-format LoRA of scale 1 (``<module>.lora_A.weight`` ...)."""
    out = {}
    for key, a in lora.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            out[f"{module}.weight"] = lora[f"{module}.lora_B.weight"].float() @ a.float()
    return out

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
    lora: dict[str, torch.Tensor] = field(default_factory=dict)
    attachment: Attachment | None = None
    _originals: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _handles: list = field(default_factory=list, repr=False)

    # -- applying ------------------------------------------------------------------------------------
    def touched(self) -> list[str]:
        """Keys of every model tensor the erasure changes (full tensors and LoRA-updated weights)."""
        return sorted(set(self.weights) | set(lora_deltas(self.lora)))

    def originals_of(self, pipe) -> dict[str, torch.Tensor]:
        return {k: get_tensor(pipe, k).detach() for k in self.touched()}

    def check_compatible(self, pipe) -> None:
        current = self.originals_of(pipe)
        shapes = {k: v.shape for k, v in {**lora_deltas(self.lora), **self.weights}.items()}
        for k, t in current.items():
            if t.shape != shapes[k]:
                raise IncompatibleErasureError(f"{k} has shape {tuple(t.shape)} in the model but {tuple(shapes[k])} in the erasure")
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
        for k, delta in lora_deltas(self.lora).items():
            p = get_tensor(pipe, k)
            p.copy_((p.float() + delta.to(p.device)).to(p.dtype))
        if self.attachment is not None:
            self._handles = self.attachment.install(pipe)
        return pipe

    @torch.no_grad()
    def remove(self, pipe):
        """Restore the exact weights ``pipe`` had before :meth:`apply`."""
        if not self._originals and not self._handles:
            raise IncompatibleErasureError("this erasure has not been applied to a model in this session; nothing to remove")
        for k, v in self._originals.items():
            get_tensor(pipe, k).copy_(v)
        for h in self._handles:
            h.remove()
        self._originals, self._handles = {}, []
        return pipe

    # -- describing ----------------------------------------------------------------------------------
    def changed_tensors(self) -> list[str]:
        return self.touched()

    def num_bytes(self) -> int:
        extra = list(self.attachment.tensors().values()) if self.attachment is not None else []
        return sum(t.numel() * t.element_size() for t in [*self.weights.values(), *self.lora.values(), *extra])

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
            "lora": bool(self.lora),
            "attachment": {"kind": self.attachment.kind, "config": self.attachment.config()} if self.attachment is not None else None,
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
            if self.lora:
                save_tensors(tmp / LORA_FILE, self.lora)
            if self.attachment is not None:
                save_tensors(tmp / ATTACHMENT_FILE, self.attachment.tensors())
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
            lora=load_tensors(directory / LORA_FILE) if meta.get("lora") else {},
            attachment=_load_attachment(directory, meta.get("attachment")),
        )


def _load_attachment(directory: Path, meta: dict | None) -> Attachment | None:
    if not meta:
        return None
    return restore_attachment(meta["kind"], meta["config"], load_tensors(directory / ATTACHMENT_FILE))
