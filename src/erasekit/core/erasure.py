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

from erasekit.core.attachments import Attachment, restore_attachment
from erasekit.core.errors import CorruptFileError, IncompatibleErasureError, MissingFileError, NonFiniteError
from erasekit.core.io import atomic_path, load_tensors, read_json, save_tensors, write_json
from erasekit.core.outputs import check_dir_output, write_manifest
from erasekit.core.request import ErasureRequest, ForgetRequest, request_from_dict

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


def model_fingerprint(pipe, sample: int = 1024) -> str:
    """A cheap identity of a pipeline's weights: sha256 over the name, shape and dtype of every
    parameter of every component and ``sample`` evenly spaced values of each. Not a full hash (it
    reads a few MB of a multi-GB model), but two different checkpoints practically never collide."""
    h = hashlib.sha256()
    components = getattr(pipe, "components", {}) or {}
    for name in sorted(components):
        module = components[name]
        if not isinstance(module, torch.nn.Module):
            continue
        for key, p in module.named_parameters():
            flat = p.detach().reshape(-1)
            picked = flat[:: max(1, flat.numel() // sample)][:sample].to("cpu").contiguous()
            h.update(f"{name}.{key}|{tuple(p.shape)}|{p.dtype}|".encode())
            h.update(picked.view(torch.uint8).numpy().tobytes() if picked.numel() else b"")
    return h.hexdigest()


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise :class:`NonFiniteError` naming the first tensor of ``tensors`` that holds NaN or infinity."""
    for key in sorted(tensors):
        t = tensors[key]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise NonFiniteError(
                f"{what}: {key} holds {bad} NaN or infinite value(s); nothing is saved or applied "
                "(lower the learning rate or scale parameters)"
            )


@dataclass
class AppliedErasure:
    """An erasure written into a pipeline: the original values it replaced and the hooks it added.
    :meth:`remove` (or leaving the ``with`` block) restores the pipeline bit for bit, once."""

    pipe: object
    originals: dict[str, torch.Tensor]
    handles: list

    def remove(self):
        if self.originals is None:
            raise IncompatibleErasureError("this erasure was already removed from the model")
        with torch.no_grad():
            for k, v in self.originals.items():
                get_tensor(self.pipe, k).copy_(v)
        for h in self.handles:
            h.remove()
        self.originals, self.handles = None, []
        return self.pipe

    def __enter__(self):
        return self.pipe

    def __exit__(self, *exc) -> None:
        self.remove()


@dataclass
class Erasure:
    method: str
    params: dict
    request: ErasureRequest | ForgetRequest
    base_model: str
    base_hash: str
    weights: dict[str, torch.Tensor]
    family: str = ""
    timings: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    version: str = ""
    lora: dict[str, torch.Tensor] = field(default_factory=dict)
    attachment: Attachment | None = None
    _applied: dict[int, "AppliedErasure"] = field(default_factory=dict, repr=False)  # apply/remove by model

    # -- applying ------------------------------------------------------------------------------------
    def touched(self) -> list[str]:
        """Keys of every model tensor the erasure changes (full tensors and LoRA-updated weights)."""
        return sorted(set(self.weights) | set(lora_deltas(self.lora)))

    def originals_of(self, pipe) -> dict[str, torch.Tensor]:
        return {k: get_tensor(pipe, k).detach() for k in self.touched()}

    def own_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the erasure stores, by file: ``weights/…``, ``lora/…``, ``attachment/…``."""
        out = {f"weights/{k}": v for k, v in self.weights.items()}
        out.update({f"lora/{k}": v for k, v in self.lora.items()})
        if self.attachment is not None:
            out.update({f"attachment/{k}": v for k, v in self.attachment.tensors().items()})
        return out

    def checksum(self) -> str:
        """sha256 of the erasure's own tensors (stored in ``erasure.json``, verified by :meth:`load`)."""
        return hash_tensors(self.own_tensors())

    def identity(self) -> str:
        """sha256 of what decides the erasure's effect: its tensors (:meth:`checksum`) and its attachment's
        kind and configuration (two guards without tensors, e.g. SLD at two settings, differ here)."""
        import json

        attachment = None if self.attachment is None else {"kind": self.attachment.kind, "config": self.attachment.config()}
        return hashlib.sha256(f"{self.checksum()}|{json.dumps(attachment, sort_keys=True)}".encode()).hexdigest()

    def check_compatible(self, pipe, force: bool = False, hint: str = "pass force=True (--force) to apply anyway") -> None:
        """Shapes must match the model's always; the original values must match ``base_hash`` unless ``force``."""
        current = self.originals_of(pipe)
        shapes = {k: v.shape for k, v in {**lora_deltas(self.lora), **self.weights}.items()}
        for k, t in current.items():
            if t.shape != shapes[k]:
                raise IncompatibleErasureError(
                    f"{k} has shape {tuple(t.shape)} in the model but {tuple(shapes[k])} in the erasure; "
                    "it was made for another model"
                )
        if not force and hash_tensors(current) != self.base_hash:
            raise IncompatibleErasureError(
                f"the model's weights differ from those the erasure was computed on ({self.base_model}); "
                f"is it another model, or is an erasure already applied? ({hint})"
            )

    def applied(self, pipe, force: bool = False) -> "AppliedErasure":
        """Write the erased weights into ``pipe`` (in place; checks shapes, and the base hash unless
        ``force``) and return the handle that undoes it, also usable as a context manager::

            with erasure.applied(pipe):
                images = erasekit.generate(pipe, prompts, seeds)   # pipe is restored afterwards
        """
        check_finite(self.own_tensors(), f"erasure {self.method}")
        self.check_compatible(pipe, force=force)
        originals = {k: t.clone() for k, t in self.originals_of(pipe).items()}
        with torch.no_grad():
            for k, v in self.weights.items():
                p = get_tensor(pipe, k)
                p.copy_(v.to(device=p.device, dtype=p.dtype))
            for k, delta in lora_deltas(self.lora).items():
                p = get_tensor(pipe, k)
                p.copy_((p.float() + delta.to(p.device)).to(p.dtype))
        handles = self.attachment.install(pipe) if self.attachment is not None else []
        return AppliedErasure(pipe, originals, handles)

    def apply(self, pipe, force: bool = False):
        """:meth:`applied` for callers that undo it later with :meth:`remove`; returns ``pipe``."""
        if id(pipe) in self._applied:
            raise IncompatibleErasureError("this erasure is already applied to that model; remove it first")
        self._applied[id(pipe)] = self.applied(pipe, force=force)
        return pipe

    def remove(self, pipe):
        """Restore the exact weights ``pipe`` had before :meth:`apply` (bit for bit); returns ``pipe``."""
        handle = self._applied.pop(id(pipe), None)
        if handle is None:
            raise IncompatibleErasureError("this erasure has not been applied to that model in this session; nothing to remove")
        handle.remove()
        return pipe

    def with_guard(self, guard: "Erasure") -> "Erasure":
        """This erasure with a guard stacked on it (``--erasure E --guard G``): E's weights, LoRA and
        request, then E's attachment and G's (:class:`~erasekit.core.guards.Stack`), as one erasure
        named ``E+G``. ``guard`` must be an erasure of kind guard (it changes no weight)."""
        from erasekit.core.guards import Stack

        check_guard(guard)
        if guard.family and self.family and guard.family != self.family:
            raise IncompatibleErasureError(
                f"--guard: the guard was made for a {guard.family} model, the erasure for {self.family}"
            )
        parts = [a for a in (self.attachment, guard.attachment) if a is not None]
        timings = dict(self.timings)
        if "seconds" in self.timings or "seconds" in guard.timings:  # what making both cost
            timings["seconds"] = self.timings.get("seconds", 0) + guard.timings.get("seconds", 0)
        return Erasure(
            method=f"{self.method}+{guard.method}", params={self.method: self.params, guard.method: guard.params},
            request=self.request, base_model=self.base_model, base_hash=self.base_hash, weights=self.weights,
            family=self.family, timings=timings, info={self.method: self.info, guard.method: guard.info},
            version=self.version, lora=self.lora, attachment=parts[0] if len(parts) == 1 else Stack(parts),
        )  # fmt: skip

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
            "tensors_sha256": self.checksum(),
            "lora": bool(self.lora),
            "attachment": {"kind": self.attachment.kind, "config": self.attachment.config()}
            if self.attachment is not None
            else None,
            "timings": self.timings,
            "info": self.info,
            "erasekit_version": self.version,
        }

    # -- files ---------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, protect: tuple[str | os.PathLike, ...] = ()) -> Path:
        """Write ``erasure.json`` and the tensors to ``directory`` atomically. Refused: a non-finite
        tensor, and a directory that is not new, empty, or an earlier erasure holding only erasekit's files."""
        check_finite(self.own_tensors(), f"erasure {self.method}")
        directory = check_dir_output(directory, "erasure", protect, what="erasure directory")
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            save_tensors(tmp / "weights.safetensors", self.weights, metadata={"format": FORMAT, "method": self.method})
            if self.lora:
                save_tensors(tmp / LORA_FILE, self.lora)
            if self.attachment is not None:
                save_tensors(tmp / ATTACHMENT_FILE, self.attachment.tensors())
            write_json(tmp / "erasure.json", self.metadata())
            write_manifest(tmp, "erasure", files=True)
        return directory

    @staticmethod
    def load(directory: str | os.PathLike) -> "Erasure":
        """Read an erasure directory; a damaged one (unreadable files, missing fields, tensors that do not
        match the stored checksum, NaN or infinity) is refused with a one-line error."""
        directory = Path(directory)
        meta_path, weights_path = directory / "erasure.json", directory / "weights.safetensors"
        if not meta_path.is_file() or not weights_path.is_file():
            raise MissingFileError(f"{directory} is not an erasure directory (expected erasure.json and weights.safetensors)")
        meta = read_json(meta_path)
        if not isinstance(meta, dict):
            raise CorruptFileError(f"{meta_path} is not an erasure description (expected a JSON object)")
        if meta.get("format") != FORMAT:
            raise IncompatibleErasureError(f"{meta_path} has format {meta.get('format')!r}; this erasekit reads {FORMAT!r}")
        for key, tp in (("method", str), ("params", dict), ("request", dict), ("base_model", str), ("base_hash", str)):
            if not isinstance(meta.get(key), tp):
                raise CorruptFileError(f"{meta_path} lacks a valid {key!r} field; the erasure is damaged")
        try:
            attachment = _load_attachment(directory, meta.get("attachment"))
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(
                f"{directory}: the attachment does not match its description ({e}); the erasure is damaged"
            ) from None
        erasure = Erasure(
            method=meta["method"],
            params=meta["params"],
            request=request_from_dict(meta["request"]),
            base_model=meta["base_model"],
            base_hash=meta["base_hash"],
            weights=load_tensors(weights_path),
            family=meta.get("family", ""),
            timings=meta.get("timings", {}),
            info=meta.get("info", {}),
            version=meta.get("erasekit_version", ""),
            lora=load_tensors(directory / LORA_FILE) if meta.get("lora") else {},
            attachment=attachment,
        )
        stored = meta.get("tensors_sha256")
        if stored is not None and stored != erasure.checksum():
            raise CorruptFileError(
                f"{directory}: the tensors do not match the checksum in erasure.json; the erasure is damaged or was edited"
            )
        check_finite(erasure.own_tensors(), f"{directory}")
        return erasure


def check_guard(guard: Erasure) -> Erasure:
    """``guard`` if it is an erasure of kind guard (no weight changes), else a one-line error."""
    from erasekit.core.errors import ConfigError
    from erasekit.core.registry import METHODS

    spec = METHODS.get(guard.method.rsplit("+", 1)[-1])
    if spec is None or spec.kind != "guard" or guard.weights or guard.lora or guard.attachment is None:
        raise ConfigError(f"--guard: a {guard.method} erasure is not a guard (see 'erasekit methods', kind guard)")
    return guard


def stacked(erasure: "Erasure | str | os.PathLike | None", guard: "Erasure | str | os.PathLike | None") -> "Erasure | None":
    """What ``--erasure E --guard G`` applies: E (an erasure or its directory; ``None``: none) with the
    guard G stacked on it (:meth:`Erasure.with_guard`), G alone without E, E alone without G."""
    loaded = erasure if isinstance(erasure, Erasure) or erasure is None else Erasure.load(erasure)
    if guard is None:
        return loaded
    g = check_guard(guard if isinstance(guard, Erasure) else Erasure.load(guard))
    return g if loaded is None else loaded.with_guard(g)


def _load_attachment(directory: Path, meta: dict | None) -> Attachment | None:
    if not meta:
        return None
    if not isinstance(meta, dict) or "kind" not in meta or "config" not in meta:
        raise KeyError("kind and config")
    return restore_attachment(meta["kind"], meta["config"], load_tensors(directory / ATTACHMENT_FILE))
