"""File I/O that never loses or half-writes data: atomic writes, safetensors only (never pickle)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from erasekit.core.errors import CorruptFileError, MissingFileError, first_line

TMP_TAG = ".erasekit-tmp-"
OLD_TAG = ".erasekit-old-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def _sweep_stale(path: Path) -> None:
    """Finish what a killed writer of ``path`` left: a backup whose swap was interrupted goes back to
    ``path``; temporaries and backups of dead processes are removed (only erasekit's own names)."""
    prefix = f".{path.name}"
    for sib in path.parent.glob(f"{glob_escape(prefix)}.erasekit-*"):
        name = sib.name[len(prefix) :]
        tag = TMP_TAG if name.startswith(TMP_TAG) else OLD_TAG if name.startswith(OLD_TAG) else None
        if tag is None:
            continue
        pid_text = name[len(tag) :].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        if tag == OLD_TAG and not path.exists() and not path.is_symlink():
            os.replace(sib, path)  # the swap was killed between its two renames: the old output is restored
        elif sib.is_dir() and not sib.is_symlink():
            shutil.rmtree(sib, ignore_errors=True)
        else:
            sib.unlink(missing_ok=True)


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    Works for files and directories: whatever the body writes at the yielded path becomes ``path``.
    On an exception nothing at ``path`` changes and the temporary is removed; a temporary left by a
    killed process is removed by the next write of the same path. Never call it on a path erasekit
    does not own (see :mod:`erasekit.core.outputs`): an existing directory there is replaced whole.
    Files get the usual permissions (``0o666`` less the umask), not the private mode of temporaries.
    """
    from erasekit.core.outputs import refuse_protected

    path = refuse_protected(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(path)
    holder = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_TAG}{os.getpid()}-", dir=path.parent))
    tmp = holder / path.name
    try:
        yield tmp
        _usual_modes(tmp)
        if path.is_dir() and not path.is_symlink():
            old = path.parent / f".{path.name}{OLD_TAG}{os.getpid()}-{holder.name[-8:]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def _usual_modes(path: Path) -> None:
    """Give ``path`` (and, for a directory, everything in it) the modes of a plain ``open``/``mkdir``:
    libraries write some files private (safetensors: 0600) and temporaries are 0700."""
    mask = _umask()
    if path.is_symlink() or not path.exists():
        return
    if path.is_file():
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            if not os.path.islink(os.path.join(root, f)):
                os.chmod(os.path.join(root, f), 0o666 & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def finite_json(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by ``None`` (JSON has no such numbers)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically; NaN and infinity become ``null`` (valid JSON)."""
    text = json.dumps(finite_json(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing one is a :class:`MissingFileError`, a garbled one a :class:`CorruptFileError`."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path} is not valid JSON ({first_line(e)}); it is damaged or not erasekit's") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors, atomically (tensors are made contiguous CPU copies)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (never pickle); a truncated or garbled one is a :class:`CorruptFileError`."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError, or OSError / ValueError
        raise CorruptFileError(
            f"{path} is not a readable safetensors file ({first_line(e)}); it is truncated or damaged"
        ) from None


def tensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header (empty when it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({first_line(e)})") from None


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors (for safetensors) and a JSON-able remainder."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], extra: dict) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": extra["param_groups"]})


def _unique_state(module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], set[str]]:
    """A module's state dict without the entries that share storage with an earlier one (tied
    weights, which safetensors refuses to store twice), and the names of those left out."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    tied: set[str] = set()
    for key, value in module.state_dict().items():
        ptr = value.untyped_storage().data_ptr() if value.numel() else id(value)
        if ptr in seen:
            tied.add(key)
            continue
        seen.add(ptr)
        kept[key] = value.contiguous()
    return kept, tied


def save_checkpoint(
    directory: Path, name: str, step: int, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer
) -> None:
    """A training checkpoint ``ckpt-NAME``: the modules' weights (keys prefixed by module name when
    there are several; tied weights stored once), the optimizer state and the step."""
    tensors: dict[str, torch.Tensor] = {}
    for k, m in modules.items():
        state, _ = _unique_state(m)
        tensors.update(state if len(modules) == 1 else {f"{k}.{p}": v for p, v in state.items()})
    save_tensors(directory / f"ckpt-{name}.safetensors", tensors)
    opt_t, extra = optimizer_tensors(opt)
    save_tensors(directory / f"ckpt-{name}-optim.safetensors", opt_t)
    write_json(directory / f"ckpt-{name}.json", {"step": step, **extra})


def load_checkpoint(directory: Path, name: str, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer) -> int:
    """Restore :func:`save_checkpoint`'s ``ckpt-NAME`` into ``modules`` and ``opt``; the step it holds
    (0 when there is none). Every weight must be there except the tied ones, which are re-tied."""
    meta = directory / f"ckpt-{name}.json"
    if not meta.exists():
        return 0
    info = read_json(meta)
    tensors = load_tensors(directory / f"ckpt-{name}.safetensors")
    for k, m in modules.items():
        state = tensors if len(modules) == 1 else {p[len(k) + 1 :]: v for p, v in tensors.items() if p.startswith(k + ".")}
        _, tied = _unique_state(m)
        result = m.load_state_dict(state, strict=False)
        if set(result.missing_keys) - tied or result.unexpected_keys:
            raise CorruptFileError(f"{directory}/ckpt-{name}.safetensors does not match the model being trained; start a new run")
        if tied and hasattr(m, "tie_weights"):
            m.tie_weights()
    restore_optimizer(opt, load_tensors(directory / f"ckpt-{name}-optim.safetensors"), info)
    return int(info["step"])


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_image_folder(folder: str | Path, size: int, what: str = "image folder") -> torch.Tensor:
    """``uint8 [N, size, size, 3]`` from the PNG/JPEG/WebP files of ``folder`` (sorted by name,
    centre-cropped to a square, resized bicubically); ``what`` names the option in the error."""
    import numpy as np
    from PIL import Image

    path = Path(folder)
    files = sorted(p for p in path.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else []
    if not files:
        raise MissingFileError(f"{what} {folder} holds no {'/'.join(IMAGE_SUFFIXES)} image")
    out = []
    for f in files:
        im = Image.open(f).convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        out.append(np.asarray(im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)))
    return torch.from_numpy(np.stack(out))
