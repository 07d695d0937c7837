"""``erasekit bench --backend ray``: the testbed bench's runs as Ray tasks, on one machine or a cluster.

Every unit of :func:`erasekit.api.bench.bench_units` (a run ``(concept, method)``, or a concept's
reference row) becomes one task with its resource needs (``num_gpus=1`` when the runs use CUDA, else
one CPU). A task loads the model and judge once per worker process, makes its unit exactly as the
sequential bench makes it (:func:`~erasekit.api.bench.bench_run`, the same seeds, hence the same
numbers) and writes its JSON into the results directory, which every node must see at the same
path (shared storage); the driver then collects the runs in unit order and writes the report.
``resume`` skips the runs already recorded with the same settings before anything is submitted, so a
grid cut short (a lost node, a stopped job) is finished by calling it again.

``address``: ``None`` starts a local cluster of this machine's CPUs (and GPUs); ``"auto"`` joins the
cluster ``ray start --head`` runs here; ``"ray://HOST:10001"`` a remote one (Ray Client).
"""

from __future__ import annotations

import os
from pathlib import Path

from erasekit.core.errors import ConfigError, ErasekitError

_WORKER: dict = {}  # per worker process: (model, device, dtype) -> (pipeline, judge, method judge)


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'erasekit[ray]'") from None
    return ray


def _num_gpus(ray, device: str | None) -> int:
    """1 when the runs use CUDA (``--device cuda``, or no device named and the cluster has GPUs), else 0."""
    if device is not None:
        return 1 if str(device).startswith("cuda") else 0
    return 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0


def _loaded(model, device, dtype):
    """The worker's pipeline and judges for ``model`` (loaded on its first task, reused by the next)."""
    key = (str(model), device, dtype)
    if key not in _WORKER:
        from erasekit import models
        from erasekit.api.judges import load_judge
        from erasekit.judges.testbed import TestbedJudge

        judge = load_judge(model)
        _WORKER.clear()
        _WORKER[key] = (models.load_pipeline(model, device=device, dtype=dtype), judge, TestbedJudge(judge))
    return _WORKER[key]


def run_unit(unit: tuple[str, str | None], setting: dict, cwd: str) -> dict | None:
    """One bench unit in a Ray worker (in the driver's working directory, so relative paths agree)."""
    from erasekit.api.bench import attack_references, bench_run

    os.chdir(cwd)
    concept, method = unit
    pipe, judge, method_judge = _loaded(setting["model"], setting["device"], setting["dtype"])
    out_dir = Path(setting["out_dir"])
    if method is None:
        attack_references(
            pipe, concept, setting["attacks"], out_dir, setting["oracle"], setting["device"], setting["dtype"], False
        )
        return None
    return bench_run(pipe, judge, method_judge, method, concept, out_dir, setting["model"], setting["seeds"], setting["contexts"],
                     setting["params"], setting["attacks"], progress=False)  # fmt: skip


def ray_runs(methods, concepts, out_dir: Path, model, seeds: int, contexts: int, params: dict, attacks: list[str], oracle,
             device, dtype, progress: bool, resume: bool, address: str | None) -> list[dict]:  # fmt: skip
    """Every unit of the bench as a Ray task (module docstring); the runs in unit order."""
    from erasekit.api.bench import bench_units, recorded_run, run_key

    ray = _ray()
    setting = dict(model=str(model), seeds=seeds, contexts=contexts, params=params, attacks=attacks, oracle=oracle,
                   device=device, dtype=dtype, out_dir=str(out_dir))  # fmt: skip
    units = bench_units(methods, concepts, bool(attacks))
    recorded: dict = {}
    for concept, method in units:
        if resume and method is not None:
            recorded[(concept, method)] = recorded_run(out_dir, method, concept, run_key(model, method, concept, seeds, contexts,
                                                                                         params, attacks))  # fmt: skip
    todo = [u for u in units if recorded.get(u) is None]
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=1, num_gpus=_num_gpus(ray, device))(run_unit)
        done = _collected(ray, {task.remote(u, setting, os.getcwd()): u for u in todo}, progress)
    finally:
        if started:
            ray.shutdown()
    runs = [recorded.get(u) or done[u] for u in units if u[1] is not None]
    return [r for r in runs if r is not None]


def _collected(ray, pending: dict, progress: bool) -> dict:
    """Each task's result by its unit, as the tasks finish; a failed task is one line naming its run."""
    from tqdm.auto import tqdm

    done: dict = {}
    with tqdm(total=len(pending), desc="bench (ray)", disable=not progress, unit="run") as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ready[0])
            try:
                done[unit] = ray.get(ready[0])
            except Exception as e:  # a task's error arrives wrapped (RayTaskError): name the unit and its cause
                cause = getattr(e, "cause", e)
                text = str(cause).strip().splitlines()
                raise ErasekitError(f"the bench run {unit[1] or 'references'} / {unit[0]} failed on Ray: "
                                    f"{type(cause).__name__}: {text[0] if text else ''}") from None  # fmt: skip
            bar.update(1)
    return done
