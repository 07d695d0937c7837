"""Data-parallel jobs: ``evaluate``, ``attack`` and ``bench`` sharded over the processes that
``torchrun`` or ``accelerate launch`` starts, with the same numbers for any number of processes::

    torchrun --nproc_per_node 2 -m erasekit evaluate --erasure E --out eval.json
    accelerate launch --multi_gpu --num_processes 8 -m erasekit bench --methods uce,esd --concepts star

A launcher tells each process its ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; the first job a
process runs joins the process group (:func:`join`, through ``accelerate.PartialState``: gloo on the
CPU, NCCL on CUDA, each process on the GPU of its local rank). Work is cut into **units** whose
results do not depend on the process that makes them:

- a batch of images (:func:`erasekit.generation.generate`, the image cache's batches, an attack's
  plain trial images): batches are formed over all items exactly as one process forms them, and
  every image's noise comes from its own seed;
- an attack of ``attack --attack a,b,c``: each draws its randomness from its own seeded generator;
- a bench run (method, concept), and a reference row (the base model or the oracle, attacked).

Unit ``k`` is made by rank ``k mod N`` (:meth:`Shards.map`), which hands every rank every unit's
result in unit order, so all that follows (judging, metrics, intervals, tables) is computed alike
everywhere and the merged report is the one-process report, byte for byte once the readings of
time and memory (:data:`VOLATILE`) are set aside (:func:`comparable`). Rank 0 alone writes outputs
(:func:`writes`); inside a unit a rank works alone (:func:`solo`) and writes that unit's own files
(a bench run's JSON, the image cache's entries), so a killed run resumes from what each rank finished.

On a single process (no launcher, or ``WORLD_SIZE=1``) every function here is the plain loop.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from erasekit.core.errors import ConfigError, ErasekitError

T = TypeVar("T")
R = TypeVar("R")

#: Report keys that read the clock or the memory (or a cache's hits): they differ between any two
#: runs, sharded or not, and are left out when reports are compared (:func:`comparable`).
VOLATILE = frozenset(
    {"seconds", "eval_seconds", "erase_seconds", "eval_seconds_so_far", "peak_memory_mib", "peak_memory_scope",
     "image_cache", "timings", "train_seconds", "wall_seconds"}
)  # fmt: skip

#: The commands that shard; every other command refuses to run under a launcher.
SHARDED_COMMANDS = ("evaluate", "attack", "bench")


@dataclass(frozen=True)
class Shards:
    """This process's place among the launched ones: ``rank`` of ``world`` (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes outputs and prints."""
        return self.rank == 0

    def owns(self, k: int) -> bool:
        """Whether unit ``k`` is this rank's: ``k mod world == rank``."""
        return k % self.world == self.rank

    def barrier(self) -> None:
        """Wait until every rank arrives (nothing on one process)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def map(
        self, units: Sequence[T], fn: Callable[[T], R], desc: str = "", progress: bool = False, unit: str = "unit"
    ) -> list[R]:
        """``[fn(u) for u in units]`` with unit ``k`` made by rank ``k mod world`` alone (inside
        :func:`solo`), every result handed to every rank, in unit order. A unit that fails on one
        rank fails the call on every rank (its message named), so no rank waits forever."""
        from tqdm.auto import tqdm

        own = [k for k in range(len(units)) if self.owns(k)]
        done: dict[int, tuple[bool, Any]] = {}  # unit -> (True, result) or (False, the error's first line)
        error: BaseException | None = None
        bar = tqdm(own, desc=desc, disable=not progress or not self.main, unit=unit, leave=False)
        with solo():
            for k in bar:
                if self.world == 1:
                    done[k] = (True, fn(units[k]))
                    continue
                try:
                    done[k] = (True, fn(units[k]))
                except Exception as e:  # handed to the other ranks below, then raised here
                    done[k], error = (False, _first_line(e)), e
                    break
        merged = done if self.world == 1 else _gathered(done, self.world)
        if error is not None:
            raise error
        failed = [(k, v) for k, (ok, v) in sorted(merged.items()) if not ok]
        if failed:
            k, message = failed[0]
            raise ErasekitError(f"rank {k % self.world} failed on its part of the work: {message}")
        return [merged[k][1] for k in range(len(units))]

    def map_batches(
        self, n: int, size: int, fn: Callable[[list[int]], R], desc: str = "", progress: bool = False, unit: str = "batch"
    ) -> list[R]:
        """:meth:`map` over the batches of rows ``0..n-1``: batch ``k`` is rows ``[k·size, (k+1)·size)``
        (the last one shorter), formed as one process forms them, so batch ``k``'s draws do not depend
        on the number of ranks; ``fn`` receives a batch's row indices."""
        step = max(1, size)
        return self.map([list(range(i, min(i + step, n))) for i in range(0, n, step)], fn, desc, progress, unit)


def _gathered(done: dict[int, tuple[bool, Any]], world: int) -> dict[int, tuple[bool, Any]]:
    """The union of every rank's ``done`` (``torch.distributed.all_gather_object``)."""
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, done)
    merged: dict[int, tuple[bool, Any]] = {}
    for part in parts:
        merged.update(part)
    return merged


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


_joined = Shards()
_alone: Shards | None = None


def current() -> Shards:
    """The shards the code running now works in: one process inside :func:`solo`, else the launched ones."""
    return _alone if _alone is not None else _joined


def writes() -> bool:
    """Whether this process writes outputs now (rank 0, or any rank inside :func:`solo`)."""
    return current().main


@contextmanager
def solo() -> Iterator[None]:
    """Within this block the process works alone: nothing is sharded and it writes its own outputs."""
    global _alone
    before, _alone = _alone, Shards()
    try:
        yield
    finally:
        _alone = before


def launched() -> Shards | None:
    """The ranks a launcher (torchrun, accelerate launch) set in the environment, or ``None`` on one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return None
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise ConfigError(
            "WORLD_SIZE is set but RANK is missing or not a number: start erasekit with torchrun or accelerate launch"
        ) from None
    return Shards(rank, world, local)


def join(device: str | None = None, job: str = "this job") -> Shards:
    """Join the launched process group once per process (gloo when ``device`` is the CPU or no CUDA is
    there, else NCCL) and return the shards; one process: :class:`Shards` ``()``. Inside :func:`solo`
    the process stays alone."""
    global _joined
    if _alone is not None or _joined.world > 1:
        return current()
    env = launched()
    if env is None:
        return _joined
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or (device is not None and not str(device).startswith(("cuda", "auto")))
    if device is not None and str(device).startswith("cuda:"):
        raise ConfigError(
            f"--device {device} under {env.world} processes: each process takes the GPU of its LOCAL_RANK; pass --device cuda"
        )
    state = PartialState(cpu=cpu)
    _joined = Shards(state.process_index, state.num_processes, state.local_process_index)
    atexit.register(_leave)
    return _joined


def _leave() -> None:
    """Leave the process group before the interpreter exits (at exit; a group left to the interpreter's
    teardown can abort the process when a peer has already gone)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def refuse_sharded(what: str) -> None:
    """A one-line error when ``what`` runs under a launcher with more than one process."""
    env = launched()
    if env is not None:
        raise ConfigError(f"{what} runs in one process, not under {env.world} (torchrun / accelerate launch shard "
                          f"{', '.join(SHARDED_COMMANDS)} of image pipelines); run it without the launcher")  # fmt: skip


def comparable(report: Any) -> Any:
    """``report`` without its :data:`VOLATILE` readings (recursively): what the same command gives
    for any number of processes."""
    if isinstance(report, dict):
        return {k: comparable(v) for k, v in report.items() if k not in VOLATILE}
    if isinstance(report, list):
        return [comparable(v) for v in report]
    return report
