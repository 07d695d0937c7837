"""Render docs/performance.md from the benchmark JSON files under benchmarks/results/."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def generation_section() -> list[str]:
    path = RESULTS / "generation.json"
    if not path.is_file():
        return ["_generation benchmark not run yet_", ""]
    data = json.loads(path.read_text())
    s = data["sampling"]
    lines = [
        f"Model `{data['model']}`, {s['steps']} DDIM steps, guidance {s['guidance_scale']} (classifier-free guidance doubles the batch), "
        f"device {data['device']}, {data['torch_threads']} torch threads on {data['cpu_count']} cores, torch {data['torch']}.",
        "",
        "| batch size | images | seconds | images / s |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['batch_size']} | {r['images']} | {r['seconds']:.2f} | {r['images_per_second']:.1f} |" for r in data["results"]
    ]
    return lines + [""]


def guard_latency_section() -> list[str]:
    path = RESULTS / "guard_latency.json"
    if not path.is_file():
        return ["_guard latency benchmark not run yet_", ""]
    data = json.loads(path.read_text())
    s = data["sampling"]
    lines = [
        f"Model `{data['model']}`, {data['images']} images in batches of {data['batch_size']}, {s['steps']} steps, guidance "
        f"{s['guidance_scale']}, each guard made for `{data['concept']}`; the configurations took turns {data['repeats']} times and "
        f"each kept its fastest time ({data['torch_threads']} torch threads, {data['cpu_count']} cores, torch {data['torch']}). "
        "The ratio is against the plain pipeline in the same run; `plain (erasekit loop)` is erasekit's own "
        "sampling loop with a guard that does nothing (what every guard samples through).",
        "",
        "| configuration | seconds | seconds / image | ratio to plain |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['configuration']} | {r['seconds']:.2f} | {r['seconds_per_image']:.4f} | {r['ratio_to_plain']:.2f} |"
        for r in data["results"]
    ]
    return lines + [""]


def closed_form_section() -> list[str]:
    path = RESULTS / "closed_form.json"
    if not path.is_file():
        return ["_closed-form benchmark not run yet_", ""]
    data = json.loads(path.read_text())
    lines = [
        f"{data['method']}; SD-1.4-shaped pipeline with random weights ({data['torch_threads']} torch threads, "
        f"{data['cpu_count']} cores, torch {data['torch']}; building it took {data['build_seconds']} s, not counted).",
        "",
        "| concepts | prompts | encoded positions | matrices | solver | encode s | solve s | total s | straightforward solve s | max relative difference | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['concepts']} | {r['prompts']} | {r['encoded_positions']} | {r['matrices']} | {r['solver']} | {r['encode_seconds']:.3f} | "
            f"{r['solve_seconds']:.3f} | {r['total_seconds']:.3f} | {r['straightforward_solve_seconds']:.3f} | "
            f"{r['max_relative_difference']:.1e} | {r['peak_rss_mib']:.0f} |"
        )
    return lines + [""]


def esd_section() -> list[str]:
    path = RESULTS / "esd_time_to_ua.json"
    if not path.is_file():
        return ["_ESD benchmark not run yet_", ""]
    data = json.loads(path.read_text())
    p = data["params"]
    reached = data["reached"]
    verdict = (
        f"**Target met**: UA {reached['ua']:.2f}, IRA {reached['ira']:.2f} after {reached['train_seconds']:.0f} s of training (step {reached['step']})."
        if data["met"]
        else (f"**Target not met**: UA >= 0.95 with IRA >= 0.85 was first reached after {reached['train_seconds']:.0f} s (step {reached['step']})."
              if reached else "**Target not met**: no checkpoint reached UA >= 0.95 with IRA >= 0.85 (curve below).")
    )  # fmt: skip
    lines = [
        f"ESD-x erasing `{data['concept']}` on the testbed: {p['iterations']} iterations, lr {p['lr']}, η {p['negative_guidance']}, "
        f"{p['ddim_steps']} DDIM steps of partial denoising, guidance {p['start_guidance']}; {data['machine']['threads']} torch threads on "
        f"{data['machine']['cpus']} cores. UA / IRA on the evaluation prompt set after each checkpoint; training seconds exclude evaluation.",
        "",
        verdict,
        "",
        "| step | training s | UA | IRA | IRA (neighbours) | CRA |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['step']} | {c['train_seconds']:.1f} | {c['ua']:.2f} | {c['ira']:.2f} | {c['ira_neighbours']:.2f} | {c['cra']:.2f} |"
        for c in data["curve"]
    ]
    return lines + ["", "![ESD time to UA](esd-time-to-ua.svg)", ""]


def attack_speed_section() -> list[str]:
    path = RESULTS / "attack_speed.json"
    if not path.is_file():
        return ["_attack-speed benchmark not run yet_", ""]
    data = json.loads(path.read_text())
    fast, full = data["suites"]["fast"], data["suites"]["all"]
    target = data["targets_seconds"]
    lines = [
        f"The red team against a {data['method']} erasure of `{data['concept']}` on the testbed, device {data['device']}, "
        f"{data['torch_threads']} torch threads on {data['cpu_count']} cores, torch {data['torch']}: the fast attacks took "
        f"**{fast['seconds']:.0f} s** together (target {target['fast']} s), the whole suite **{full['seconds']:.0f} s** "
        f"(target {target['all']} s), including the plain prompts' images once per suite.",
        "",
        "| attack | budget | trials | seconds | ASR |",
        "|---|---|---|---|---|",
    ]
    for name, a in sorted(full["attacks"].items()):
        lines.append(
            f"| {name} | {a['budget']} {a['budget_unit']} | {a['trials']} | {a['seconds']:.0f} | {100 * a['asr']:.0f} % |"
        )
    return lines + [""]


def device_matrix_section() -> list[str]:
    path = RESULTS / "device_matrix.json"
    if not path.is_file():
        return ["_device matrix not run yet_", ""]
    data = json.loads(path.read_text())
    cells = data["cells"]
    columns = list(dict.fromkeys(f"{c['device']} {c['dtype']}" for c in cells))
    rows = list(dict.fromkeys((c["what"], c["family"]) for c in cells))
    at = {(c["what"], c["family"], f"{c['device']} {c['dtype']}"): c for c in cells}
    gpu = f" and {data['gpu']}" if data.get("gpu") else " (no GPU in this run: the CUDA columns are still to be measured)"
    ok = sum(c["ok"] for c in cells)
    lines = [
        f"{ok} of {len(cells)} cells ok; devices {', '.join(data['devices'])}{gpu}; torch {data['torch']}. "
        "Each cell: seconds and peak memory (MiB; CUDA allocations or CPU resident memory). Methods run with the tiny "
        "budgets of `erasekit.testing.TINY_BUDGET` on the testbed (sd) and the tiny SDXL / SD3 / Flux pipelines; "
        "language-model methods (causal-lm) one epoch on `testbed-llm` (forget01), with its evaluation and attacks.",
        "",
        "| what | family | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for what, family in rows:
        text = []
        for col in columns:
            c = at.get((what, family, col))
            if c is None:
                text.append("")
            elif c["ok"]:
                extra = ""
                if "cpu_max_relative_difference" in c:
                    extra = f", Δcpu {c['cpu_max_relative_difference']:.0e}"
                elif "first_loss_relative_difference" in c:
                    extra = f", Δloss {c['first_loss_relative_difference']:.0e}"
                text.append(f"ok {c['seconds']:.1f} s, {c['peak_memory_mib']:.0f} MiB{extra}")
            else:
                text.append(f"**fail**: {c['error'][:60]}")
        lines.append(f"| {what} | {family} | " + " | ".join(text) + " |")
    return lines + [""]


def gpu_perf_section() -> list[str]:
    path = RESULTS / "gpu_perf.json"
    if not path.is_file():
        return ["_not measured yet: needs a GPU (`benchmarks/gpu_session.sh` runs it when a session is lent one)_", ""]
    d = json.loads(path.read_text())
    e, u = d["esd_x"], d["uce"]
    return [
        f"{d['model']} on {d['gpu'] or d['device']}, torch {d['torch']}.",
        "",
        "| measurement | erasekit | reference | ratio | target |",
        "|---|---|---|---|---|",
        f"| ESD-x s / iteration ({e['ddim_steps']} DDIM steps) | {e['erasekit_s_per_it']:.4f} | {e['bare_s_per_it']:.4f} (hand-written step) | "
        f"{e['ratio']:.2f}x | <= 1.2x |",
        f"| UCE of {u['concepts']} concepts, s | {u['erasekit_s']:.3f} | {u['authors_algorithm_s']:.3f} (authors' algorithm) | "
        f"{u['speedup']:.1f}x faster (max rel. diff {u['max_relative_difference']:.0e}) | >= 4x, <= 1e-4 |",
        "",
    ]


#: The cost model's assumptions (docs/performance.md states them beside the numbers).
I2P_PROMPTS = 4703  # I2P's rows
ASSUMED_GPU_IMAGES_PER_SECOND = 1.0  # SD-1.x, 512 px, 50 steps, fp16, one data-centre GPU: assumed, not measured here
BENCH_GRID = (13, 20)  # image methods x concepts of a full bench (UnlearnCanvas-sized concept list)
BENCH_IMAGES_PER_RUN = 2 * 1000  # an evaluation of base and erased model, 1 000 images each (prompt sets of ~1 000 draws)
ASSUMED_ERASE_SECONDS = 600  # mean erasure time per run on one GPU (closed forms take seconds, fine-tuning ~20-60 min)


def scale_section() -> list[str]:
    path = RESULTS / "scale.json"
    if not path.is_file():
        return ["_scale benchmark not run yet (`python benchmarks/scale.py`)_", ""]
    data = json.loads(path.read_text())
    sh = data["shards"]
    eff = sh["speedup"] / 2
    lines = [
        "The same command on 1 process and under `torchrun --nproc_per_node 2` (gloo, one torch thread per process, "
        f"{data['cpu_count']} cores, torch {data['torch']}); wall time of the whole command, start-up included. The two "
        "reports were equal once the readings of time and memory were set aside (the benchmark fails otherwise).",
        "",
        "| command | images per model | 1 process (s) | 2 processes (s) | speed-up |",
        "|---|---|---|---|---|",
        f"| `{sh['command']}` | {sh['images']} | {sh['seconds_1_process']:.1f} | {sh['seconds_2_processes']:.1f} | "
        f"x{sh['speedup']:.2f} |",
        "",
        "How to run it (rank 0 writes and prints; every other command refuses to run under a launcher):",
        "",
        "```",
        "torchrun --nproc_per_node 8 -m erasekit evaluate --erasure E --judge nudenet --prompts i2p.csv --cache work/ --out eval.json",
        "accelerate launch --multi_gpu --num_processes 8 -m erasekit attack --erasure E --attack all --concept nudity --prompts i2p.csv --judge nudenet",
        "torchrun --nproc_per_node 8 -m erasekit bench --methods uce,esd,spm --concepts star,zorbo --resume",
        "erasekit bench --backend ray --address auto --methods uce,esd,spm --concepts star,zorbo   # a Ray cluster",
        "```",
        "",
        "Judges, images per second on this CPU (random images of the size each judge is given):",
        "",
        "| judge | image size | images / s |",
        "|---|---|---|",
    ]
    lines += [
        f"| {j['judge']} | {j['size']} | {j.get('images_per_second', 'not run: ' + j.get('error', ''))} |" for j in data["judges"]
    ]
    nude = next((j.get("images_per_second") for j in data["judges"] if j["judge"].startswith("nudenet")), None)
    i2p_images = 2 * I2P_PROMPTS
    runs = BENCH_GRID[0] * BENCH_GRID[1]
    lines += [
        "",
        "**Cost model.** Measured here: the sharding efficiency (speed-up / processes = "
        f"{eff:.2f} on 2 CPU processes, start-up included) and the judges' throughput. Assumed, not measured (no GPU was "
        f"lent to a session yet; `benchmarks/gpu_perf.py` replaces it when one is): SD-1.x at 512 px, 50 steps, fp16 draws "
        f"{ASSUMED_GPU_IMAGES_PER_SECOND:g} image/s on one data-centre GPU; a full I2P evaluation draws {i2p_images:,} images "
        f"({I2P_PROMPTS:,} prompts, 1 image each, base and erased); a full bench is {BENCH_GRID[0]} methods x {BENCH_GRID[1]} "
        f"concepts = {runs} runs of {BENCH_IMAGES_PER_RUN:,} images and {ASSUMED_ERASE_SECONDS // 60} min of erasing each "
        "(runs are whole units: no run is split). Hours = work / (GPUs x throughput x efficiency); NudeNet on the CPU beside "
        "the GPUs"
        + (f" ({nude:g} images/s here) judges an I2P evaluation in {i2p_images / nude / 3600:.2f} h." if nude else "."),
        "",
        "| GPUs | full I2P evaluation (h) | full bench (h) |",
        "|---|---|---|",
    ]
    for g in (1, 8, 64):
        e = 1.0 if g == 1 else eff
        i2p = i2p_images / (ASSUMED_GPU_IMAGES_PER_SECOND * g * e) / 3600
        per_run = BENCH_IMAGES_PER_RUN / ASSUMED_GPU_IMAGES_PER_SECOND + ASSUMED_ERASE_SECONDS
        waves = -(-runs // g)  # runs are units: 64 GPUs take ceil(260 / 64) rounds
        bench = waves * per_run / 3600  # whole runs side by side: no sharing, so no efficiency loss but the last round's
        lines.append(f"| {g} | {i2p:.2f} | {bench:.1f} |")
    return lines + [""]


def main() -> None:
    text = [
        "# Performance",
        "",
        "Generated by `python benchmarks/render_performance.py` from the JSON the benchmarks write; every number",
        "below comes from those files. Machine: the project's 2-core CPU box unless the JSON says otherwise.",
        "",
        "## Generation throughput (`benchmarks/generation_throughput.py`)",
        "",
        *generation_section(),
        "## Guards: sampling latency per image (`benchmarks/guard_latency.py`)",
        "",
        *guard_latency_section(),
        "## Closed-form erasure at SD-1.4 scale (`benchmarks/closed_form.py`)",
        "",
        "Target: 100 concepts in at most 3 s in total and 0.2 s for the solve, weights equal to the",
        "straightforward per-layer formula within 1e-5 relative.",
        "",
        *closed_form_section(),
        "## Fine-tuning: ESD-x time to erasure on the testbed (`benchmarks/esd_time_to_ua.py`)",
        "",
        "Target: UA >= 95 % on a testbed shape with IRA >= 85 % within 2 minutes on the 2-core CPU.",
        "",
        *esd_section(),
        "## Red team: attack time on the testbed (`benchmarks/attack_speed.py`)",
        "",
        *attack_speed_section(),
        "## Devices and precisions (`benchmarks/device_matrix.py`)",
        "",
        "Target: every cell ok; on CUDA in float32 closed-form results within 1e-4 relative of the CPU's (Δcpu) and",
        "a fine-tune's first loss within float tolerance of the CPU's (Δloss).",
        "",
        *device_matrix_section(),
        "## At SD-1.4 scale on a GPU (`benchmarks/gpu_perf.py`)",
        "",
        *gpu_perf_section(),
        "## Scale: sharded runs and the cost model (`benchmarks/scale.py`)",
        "",
        *scale_section(),
    ]
    out = ROOT / "docs" / "performance.md"
    out.write_text("\n".join(text))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
