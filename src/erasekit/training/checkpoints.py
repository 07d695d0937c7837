"""Training checkpoints that are written as one unit and resume only the run that wrote them.

A checkpoint directory (an erasekit *collection*, see :mod:`erasekit.core.outputs`) holds::

    run.json              the run's identity: method, full config, request, base-model fingerprint
    step-00000040/        one complete checkpoint, written atomically (a single rename)
        params.safetensors    trained tensors (and extra state), stamped with the step
        optim.safetensors     optimiser tensors, stamped with the step
        state.json            step, training-settings fingerprint, digest of run.json, optimiser groups, log

Only the newest step directory is kept. A killed save leaves at most a hidden temporary that the
next save removes, never a half-written checkpoint. Resume refuses a checkpoint whose run identity,
settings or step stamps do not match, and a damaged one, with one line saying what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

from erasekit.core.errors import ConfigError, CorruptFileError
from erasekit.core.io import (
    atomic_path,
    load_tensors,
    optimizer_tensors,
    read_json,
    restore_optimizer,
    save_tensors,
    tensors_metadata,
    write_json,
)
from erasekit.core.outputs import claim_collection

RUN_FILE = "run.json"
_STEP = re.compile(r"^step-(\d{8})$")
#: Config fields that steer bookkeeping, not the result (a run may resume with other values).
RUN_CONTROL_FIELDS = ("checkpoint_every", "eval_every")


def _canonical(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def run_identity(method: str, config, request, base_fingerprint: str) -> dict:
    """What makes two training runs the same run: method, config (less bookkeeping), request, base model."""
    params = {k: v for k, v in dataclasses.asdict(config).items() if k not in RUN_CONTROL_FIELDS}
    return json.loads(
        _canonical({"method": method, "params": params, "request": request.to_dict(), "base_model": base_fingerprint})
    )


def _describe(identity: dict) -> str:
    request = identity.get("request", {})
    concepts = ", ".join(t["concept"] for t in request.get("targets", [])) or request.get("name", "")
    return f"{identity.get('method')} on {concepts or '?'}"


def _differences(old: dict, new: dict) -> list[str]:
    out = [k for k in ("method", "request", "base_model") if old.get(k) != new.get(k)]
    op, np_ = old.get("params", {}), new.get("params", {})
    out += [f"params.{k}" for k in sorted(set(op) | set(np_)) if op.get(k) != np_.get(k)]
    return out


def run_digest(directory: Path) -> str | None:
    """sha256 of the run identity stored in ``directory`` (``None`` when there is none)."""
    path = Path(directory) / RUN_FILE
    if not path.is_file():
        return None
    return hashlib.sha256(_canonical(read_json(path)).encode()).hexdigest()


def step_dirs(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint in ``directory``, oldest first."""
    if not Path(directory).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(directory).iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return sorted(found)


def check_resumable(directory: str | Path) -> None:
    """Resuming needs a checkpoint in ``directory``: a one-line error otherwise, never a quiet fresh start."""
    if not step_dirs(Path(directory)):
        raise ConfigError(f"resume: there is no checkpoint in {directory} to continue from; drop --resume to start the run")


def prepare(directory: str | Path, identity: dict, resume: bool) -> Path:
    """Make ``directory`` the checkpoint directory of the run ``identity``.

    Resuming: an existing run there must be this one (else a :class:`ConfigError` naming what differs),
    and it must have written a checkpoint (else an error: resuming never quietly starts fresh).
    Starting over: erasekit's own earlier checkpoints there are removed (only step directories and
    ``run.json``; nothing else is touched) and the new identity is written.
    """
    if resume:
        check_resumable(directory)
    path = claim_collection(directory, "checkpoints", what="checkpoint directory")
    old_path = path / RUN_FILE
    old = None
    if old_path.is_file():
        try:
            old = read_json(old_path)
        except CorruptFileError:
            if resume:
                raise CorruptFileError(
                    f"{old_path} is damaged; the run cannot be resumed (drop --resume to start over)"
                ) from None
    if resume and old is not None and old != identity:
        raise ConfigError(
            f"the checkpoints in {path} belong to another run ({_describe(old)}; differs in {', '.join(_differences(old, identity)) or 'format'}); "
            "drop --resume to start over there, or pass another --checkpoints directory"
        )
    if resume and old is None and step_dirs(path):
        raise ConfigError(f"the checkpoints in {path} carry no run identity ({RUN_FILE}); drop --resume to start over there")
    if not resume or old is None:
        for _, p in step_dirs(path):
            shutil.rmtree(p)
        write_json(old_path, identity)
    return path


def save(directory: Path, step: int, tensors: dict[str, torch.Tensor], opt: torch.optim.Optimizer, state: dict) -> Path:
    """Write checkpoint ``step`` atomically as ``step-NNNNNNNN/``, then drop older ones."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = {"step": str(step)}
    opt_tensors, opt_extra = optimizer_tensors(opt)
    target = directory / f"step-{step:08d}"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        save_tensors(tmp / "params.safetensors", tensors, metadata=stamp)
        save_tensors(tmp / "optim.safetensors", opt_tensors, metadata=stamp)
        write_json(tmp / "state.json", {**state, "step": step, "run": run_digest(directory), "optimizer": opt_extra})
    for s, p in step_dirs(directory):
        if s != step:
            shutil.rmtree(p, ignore_errors=True)
    return target


def load_latest(directory: Path, opt: torch.optim.Optimizer) -> tuple[int, dict[str, torch.Tensor], dict] | None:
    """``(step, tensors, state)`` of the newest checkpoint in ``directory`` (optimiser restored), or ``None``.

    Checks that every file is readable and stamped with the same step, and that the checkpoint was
    written under the run identity now in ``directory``.
    """
    found = step_dirs(directory)
    if not found:
        return None
    step, path = found[-1]
    hint = f"the checkpoint {path} is damaged; delete it (or drop --resume) to start over"
    try:
        state = read_json(path / "state.json")
        tensors = load_tensors(path / "params.safetensors")
        optim = load_tensors(path / "optim.safetensors")
        stamps = {tensors_metadata(path / f).get("step") for f in ("params.safetensors", "optim.safetensors")}
    except (CorruptFileError, FileNotFoundError):
        raise CorruptFileError(hint) from None
    if not isinstance(state, dict) or state.get("step") != step or stamps != {str(step)}:
        raise CorruptFileError(f"{hint} (its files are stamped with different steps)")
    if state.get("run") != run_digest(directory):
        raise ConfigError(f"the checkpoint {path} was written by another run than the one recorded in {directory / RUN_FILE}; "
                          "drop --resume to start over")  # fmt: skip
    try:
        restore_optimizer(opt, optim, state["optimizer"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CorruptFileError(f"{hint} (optimiser state: {e})") from None
    return step, tensors, state


def discard(directory: str | os.PathLike | None) -> None:
    """Remove erasekit's checkpoints from ``directory`` (step directories, ``run.json``, the manifest),
    and the directory itself if nothing else is left in it; any other file stays where it is."""
    from erasekit.core.outputs import MANIFEST

    if directory is None:
        return
    path = Path(directory)
    for _, p in step_dirs(path):
        shutil.rmtree(p, ignore_errors=True)
    for name in (RUN_FILE, MANIFEST):
        (path / name).unlink(missing_ok=True)
    try:
        path.rmdir()  # only succeeds when empty
    except OSError:
        pass
