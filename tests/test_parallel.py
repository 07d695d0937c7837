"""Sharded jobs (erasekit.core.parallel): evaluate, attack and bench give the same JSON on 1 process
and on 2 gloo ranks under torchrun, resume after a killed run, and the bench grid on a local Ray
cluster equals the sequential bench."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from erasekit.core import parallel

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # the same threads on 1 process and on each rank


def _erasekit(cwd: Path, *args: str, ranks: int = 1, timeout: int = 300, accelerate: bool = False) -> subprocess.CompletedProcess:
    """``erasekit ARGS`` in ``cwd``: one process, or ``ranks`` gloo ranks under torchrun (or ``accelerate
    launch --multi_gpu``, accelerate's torch.distributed launcher, which on a CPU-only machine starts gloo ranks)."""
    head = [sys.executable, "-m", "erasekit"]
    if ranks > 1:
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "-m", "erasekit"]
    if ranks > 1 and accelerate:
        head = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(ranks),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "erasekit"]  # fmt: skip
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([*head, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _same(a: Path, b: Path) -> None:
    one, two = (parallel.comparable(json.loads(p.read_text())) for p in (a, b))
    assert one == two
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a UCE erasure of star."""
    d = tmp_path_factory.mktemp("shards")
    _erasekit(d, "erase", "--method", "uce", "--concept", "star", "-o", "uce")
    return d


# -- the pieces, on one process ----------------------------------------------------------------------
def test_map_on_one_process_is_the_loop_and_units_run_alone():
    seen = []

    def unit(x):
        seen.append(parallel.current())
        return x * x

    assert parallel.Shards().map([1, 2, 3], unit) == [1, 4, 9]
    assert all(s == parallel.Shards() for s in seen)
    assert parallel.Shards(rank=1, world=3).owns(4) and not parallel.Shards(rank=0, world=3).owns(4)


def test_comparable_drops_only_readings_of_time_and_memory():
    report = {"ua": 1.0, "eval_seconds": 3.2, "targets": [{"ira": 0.5, "seconds": 1}], "peak_memory_mib": 9}
    assert parallel.comparable(report) == {"ua": 1.0, "targets": [{"ira": 0.5}]}


def test_launcher_environment_read_and_checked(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert parallel.launched() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert parallel.launched() == parallel.Shards(2, 4, 0)
    with pytest.raises(parallel.ConfigError, match="language model.*run it without the launcher"):
        parallel.refuse_sharded("evaluating a language model")
    monkeypatch.delenv("RANK")
    with pytest.raises(parallel.ConfigError, match="RANK is missing"):
        parallel.launched()


def test_commands_that_do_not_shard_are_refused_under_a_launcher(tmp_path):
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    done = subprocess.run([sys.executable, "-m", "erasekit", "erase", "--method", "uce", "--concept", "star", "-o", "e"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: 'erase' runs in one process; torchrun / accelerate launch shard evaluate, attack, bench (run it without the launcher)"
    ]
    assert not (tmp_path / "e").exists()


def test_a_failing_unit_fails_every_rank_with_its_message(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(
        "from erasekit.core import parallel\n"
        "s = parallel.join('cpu')\n"
        "def unit(k):\n"
        "    if k == 1:\n"
        "        raise ValueError('unit one broke')\n"
        "    return k\n"
        "try:\n"
        "    s.map([0, 1, 2, 3], unit)\n"
        "except Exception as e:\n"
        f"    open(f'{tmp_path}/rank{{s.rank}}.txt', 'w').write(f'{{type(e).__name__}}: {{e}}')\n"
    )  # each rank its own file: two ranks printing to one pipe interleave their lines
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    said = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert said == ["ErasekitError: rank 1 failed on its part of the work: ValueError: unit one broke",
                    "ValueError: unit one broke"]  # fmt: skip


# -- the jobs, on 1 process and on 2 gloo ranks -------------------------------------------------------
@pytest.mark.testbed
@pytest.mark.slow
def test_evaluate_gives_the_same_json_on_two_ranks_and_a_killed_run_resumes_from_its_cache(work):
    """torchrun's 2 ranks give the one-process JSON; a sharded run killed mid-way (every rank) leaves its
    drawn batches in the cache, and a rerun under accelerate launch reads them back and gives that JSON too."""
    args = ["evaluate", "--erasure", "uce", "--seeds", "1", "--contexts", "2", "--batch-size", "4"]  # 5 batches a model
    _erasekit(work, *args, "--out", "one.json")
    done = _erasekit(work, *args, "--out", "two.json", ranks=2)
    _same(work / "one.json", work / "two.json")
    assert done.stdout.count("wrote two.json") == 1  # rank 0 speaks for both

    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cached = [*args, "--cache", "cache", "--out", "k.json"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "erasekit", *cached]
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((work / "cache").glob("*/*.png"))) < 8 and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # every rank, mid-run
    proc.wait()
    drawn_before = len(list((work / "cache").glob("*/*.png")))
    assert drawn_before >= 8 and not (work / "k.json").exists()
    _erasekit(work, *cached, ranks=2, accelerate=True)
    resumed = json.loads((work / "k.json").read_text())
    assert resumed["image_cache"]["hits"] >= drawn_before  # what the killed ranks drew is read back, not drawn again
    _same(work / "one.json", work / "k.json")


@pytest.mark.testbed
@pytest.mark.slow
def test_attack_gives_the_same_json_on_two_ranks_and_resumes_with_its_cache(work):
    common = ["attack", "--erasure", "uce", "--budget", "2", "--seeds", "1", "--batch-size", "4"]  # 3 batches of trials
    args = [*common, "--attack", "arithmetic,synonyms,latent-inversion"]
    _erasekit(work, *args, "-o", "a1.json")
    names = [a["attack"] for a in json.loads((work / "a1.json").read_text())["attacks"]]
    assert names == ["arithmetic", "synonyms", "latent-inversion"]
    # a run cut short after one attack: with --cache the next run keeps that attack's result (unit 0) and
    # makes the others on 2 ranks (synonyms on rank 1, latent inversion on rank 0): the one-process JSON
    _erasekit(work, *common, "--attack", "arithmetic", "--cache", "ac", "-o", "s.json")
    _erasekit(work, *args, "--cache", "ac", "-o", "a3.json", ranks=2)
    _same(work / "a1.json", work / "a3.json")
    restored = [a["info"]["image_cache"]["attack_restored"] for a in json.loads((work / "a3.json").read_text())["attacks"]]
    assert restored == [True, False, False]


@pytest.mark.testbed
@pytest.mark.slow
def test_bench_gives_the_same_json_on_two_ranks_and_resumes(work):
    args = ["bench", "--concepts", "star", "--seeds", "1", "--contexts", "1"]
    _erasekit(work, *args, "--methods", "uce,time", "--out", "b1", "--report", "b1.md")
    # a grid cut short: only uce was run; on 2 ranks --resume keeps its run (same settings; unit 0, rank 0)
    # and rank 1 makes time's (unit 1): the results equal the one-process bench
    _erasekit(work, *args, "--methods", "uce", "--out", "b3", "--report", "b3.md")
    kept = {p.name: p.stat().st_mtime_ns for p in (work / "b3").glob("uce-*.json")}
    _erasekit(work, *args, "--methods", "uce,time", "--out", "b3", "--report", "b3.md", "--resume", ranks=2)
    assert {p.name: p.stat().st_mtime_ns for p in (work / "b3").glob("uce-*.json")} == kept
    _same(work / "b1" / "results.json", work / "b3" / "results.json")
    assert sorted(p.name for p in (work / "b3").glob("*.json")) == sorted(p.name for p in (work / "b1").glob("*.json"))
    # other settings are not the recorded run's: --resume runs it again
    _erasekit(work, *args, "--methods", "uce", "--out", "b3", "--report", "b3.md", "--resume", "--set", "uce.lamb=0.5")
    assert {p.name: p.stat().st_mtime_ns for p in (work / "b3").glob("uce-*.json")} != kept


@pytest.mark.testbed
@pytest.mark.slow
def test_the_bench_grid_on_a_local_ray_cluster_equals_the_sequential_bench(work, tmp_path):
    pytest.importorskip("ray")
    args = ["bench", "--methods", "uce,time", "--concepts", "star", "--seeds", "1", "--contexts", "1"]
    if not (work / "b1" / "results.json").is_file():
        _erasekit(work, *args, "--out", "b1", "--report", "b1.md")
    script = tmp_path / "ray_bench.py"  # ray.init(num_cpus=2): the local cluster the bench joins
    script.write_text(
        "import ray\nfrom erasekit.api import bench\nray.init(num_cpus=2, include_dashboard=False)\n"
        "bench(['uce', 'time'], ['star'], out_dir='br', report='br.md', seeds=1, contexts=1, backend='ray',"
        " progress=False)\nray.shutdown()\n"
    )
    done = subprocess.run([sys.executable, str(script)], cwd=work, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _same(work / "b1" / "results.json", work / "br" / "results.json")
