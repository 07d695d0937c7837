"""Every method x device x precision, on the testbed and the tiny SDXL / SD3 / Flux pipelines.

Usage: python benchmarks/device_matrix.py [--devices cpu,cuda] [--out benchmarks/results/device_matrix.json]

Cells: each registered method on every family it claims (the testbed for SD, tiny random pipelines for
the others, the fact-world ``testbed-llm`` for language-model methods, with its evaluation and attacks) with tiny budgets (``erasekit.testing.TINY_BUDGET``), on every device present (CPU; CUDA
when torch sees one) and precision (CPU: float32, bfloat16; CUDA: float32, float16, bfloat16), plus the
commands around them on the testbed (generate, evaluate, export, the early-stopping monitor). A cell
records ok / the error's first line, seconds and peak memory (CUDA allocations or CPU resident memory).
On CUDA it also records, in float32, how far a closed-form result lies from the CPU's (max relative
difference; target <= 1e-4) and a fine-tune's first-step loss against the CPU's (relative difference).
Half precision on the CPU runs the same maths as on CUDA; only float16 is left out there (it is slow).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path

import torch

import erasekit
from erasekit import api
from erasekit.core.io import read_json, write_json
from erasekit.core.registry import all_attacks, all_methods, get_method
from erasekit.core.resources import peak_memory_mib, reset_peak_memory
from erasekit.testing import tiny_params, tiny_pipeline

REQUEST = {"targets": [{"concept": "star"}], "preserve": ["circle"]}
TINY_REQUEST = {"targets": [{"concept": "cat"}], "preserve": ["dog"]}
DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("float32", "float16", "bfloat16")}


def model_for(family: str, device: str, dtype: str):
    """The testbed for SD, a tiny random pipeline for the other families, on ``device`` in ``dtype``."""
    if family == "sd":
        return erasekit.load_pipeline("testbed", device=device, dtype=dtype), REQUEST
    return tiny_pipeline(family).to(device=device, dtype=getattr(torch, dtype)), TINY_REQUEST


def run_cell(fn, device: str) -> dict:
    """Run ``fn() -> dict`` and time it; an exception becomes ``ok: false`` with its first line."""
    if device == "cuda":
        torch.cuda.synchronize()
    scope = reset_peak_memory(device)
    t0 = time.perf_counter()
    try:
        extra = fn() or {}
        if device == "cuda":
            torch.cuda.synchronize()
        cell = {"ok": True, **extra}
    except Exception as e:  # a failing cell is a result, not the end of the run
        cell = {"ok": False, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]}
        traceback.print_exc()
    cell.update(seconds=round(time.perf_counter() - t0, 2), peak_memory_mib=peak_memory_mib(device), memory_scope=scope)
    return cell


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over tensors of ‖a − b‖∞ / ‖b‖∞ (float64, on the CPU)."""
    worst = 0.0
    for k in b:
        x, y = a[k].double().cpu(), b[k].double().cpu()
        worst = max(worst, float((x - y).abs().max() / y.abs().max().clamp_min(1e-30)))
    return worst


def lm_method_cell(method: str, device: str, dtype: str) -> dict:
    """A language-model method on the shipped fact-world model (forget01, one epoch), applied and removed."""
    lm = erasekit.load_lm("testbed-llm", device=device, dtype=dtype)
    names = {name for name, *_ in get_method(method).parameters()}
    erasure = erasekit.unlearn(lm, method, "forget01", progress=False, **({"epochs": 1} if "epochs" in names else {}))
    with erasure.applied(lm):
        pass
    return {"tensors": len(erasure.touched()), "attachment": erasure.attachment is not None}


def lm_command_cells(device: str, dtype: str) -> dict[str, dict]:
    """Evaluation and every language-model attack (budget 1) against an NPO erasure of forget01."""
    from erasekit.api.unlearning import attack_lm, evaluate_lm

    cells = {}
    lm = erasekit.load_lm("testbed-llm", device=device, dtype=dtype)
    erasure = erasekit.unlearn(lm, "npo", "forget01", progress=False, epochs=1)
    cells["llm:evaluate"] = run_cell(lambda: {"forgotten": evaluate_lm(lm, erasure)["forget"]["forgotten"]["rate"]}, device)
    for spec in all_attacks("causal-lm"):
        cells[f"llm-attack:{spec.name}"] = run_cell(
            lambda name=spec.name: {"asr": attack_lm(lm, erasure, name, budget=1, progress=False).asr}, device
        )
    return cells


def method_cell(method: str, family: str, device: str, dtype: str) -> dict:
    if family == "causal-lm":
        return lm_method_cell(method, device, dtype)
    pipe, request = model_for(family, device, dtype)
    params = tiny_params(method, family)
    spec = get_method(method)
    if spec.trains and device == "cuda" and dtype == "float32":
        params["mixed_precision"] = "no"  # compare like with like against the CPU
    erasure = api.erase(pipe, method, request, progress=False, **params)
    with erasure.applied(pipe):
        pass
    out: dict = {"tensors": len(erasure.touched())}
    if device == "cuda" and dtype == "float32":
        cpu_pipe, _ = model_for(family, "cpu", "float32")
        on_cpu = api.erase(cpu_pipe, method, request, progress=False, **params)
        if spec.kind.startswith("closed-form") and erasure.weights:
            out["cpu_max_relative_difference"] = relative_difference(erasure.weights, on_cpu.weights)
        loss_gpu = erasure.info.get("training", {}).get("initial_loss", {})
        loss_cpu = on_cpu.info.get("training", {}).get("initial_loss", {})
        if loss_gpu and loss_cpu:
            out["first_loss_relative_difference"] = max(
                abs(loss_gpu[k] - loss_cpu[k]) / max(abs(loss_cpu[k]), 1e-12) for k in loss_cpu
            )
    return out


def command_cells(device: str, dtype: str) -> dict[str, dict]:
    """generate, evaluate, export and the early-stopping monitor on the testbed."""
    cells = {}
    with tempfile.TemporaryDirectory() as tmp:
        pipe = erasekit.load_pipeline("testbed", device=device, dtype=dtype)
        erasure = api.erase(pipe, "uce", REQUEST, progress=False)
        erasure.save(f"{tmp}/e")
        cells["generate"] = run_cell(
            lambda: {"images": len(erasekit.generate(pipe, ["a red star"] * 8, list(range(8)), progress=False))}, device
        )

        def evaluate():
            report = erasekit.evaluate(pipe, erasure, seeds=1, contexts=2, progress=False)
            return {"ua": report["ua"], "ira": report["ira"]}

        cells["evaluate"] = run_cell(evaluate, device)
        cells["export"] = run_cell(
            lambda: {"path": Path(api.export_pipeline(f"{tmp}/e", "testbed", f"{tmp}/p", device=device, dtype=dtype)).name},
            device,
        )

        def monitor():
            e = api.erase(pipe, "esd", "star", progress=False, iterations=4, eval_every=2, ddim_steps=2, stop_at_ua=0.0)
            return {"stopped_at": e.info["training"]["evaluations"][-1]["step"]}

        cells["monitor"] = run_cell(monitor, device)
        for spec in all_attacks("diffusion"):  # every attack at budget 1 on two prompts (the red team on this device)

            def attack(name=spec.name):
                r = erasekit.attack(pipe, erasure, attack=name, concept="star", budget=1, seeds=1,
                                    prompts=["a red filled star on a black background", "zorbo"], progress=False)  # fmt: skip
                return {"asr": r.asr, "trials": r.trials}

            cells[f"attack:{spec.name}"] = run_cell(attack, device)
    return cells


def _in_kind(family: str, kind: str) -> bool:
    """Whether a cell of ``family`` belongs to the ``--kind`` being run."""
    return kind == "all" or (family == "causal-lm") == (kind == "causal-lm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    ap.add_argument("--out", default="benchmarks/results/device_matrix.json")
    ap.add_argument("--merge", action="store_true", help="keep the cells of other devices already in --out")
    ap.add_argument(
        "--kind", choices=("all", "image", "causal-lm"), default="all", help="only image pipelines or language models"
    )
    args = ap.parse_args()
    methods = args.methods.split(",") if args.methods else [s.name for s in all_methods()]
    devices = [d for d in args.devices.split(",") if d]
    kept = []
    if args.merge and Path(args.out).exists():  # keep the other devices' cells (e.g. the CPU's, measured elsewhere)
        kept = [c for c in read_json(args.out)["cells"] if c["device"] not in devices or not _in_kind(c["family"], args.kind)]
    rows: list[dict] = []

    def record(what: str, family: str, device: str, dtype: str, cell: dict) -> None:
        """Append one cell and rewrite the JSON, so a run stopped at its time limit keeps what it measured."""
        rows.append({"what": what, "family": family, "device": device, "dtype": dtype, **cell})
        print(
            f"{device:5} {dtype:9} {family:5} {what:11} {'ok' if cell['ok'] else 'FAIL ' + cell['error']} {cell['seconds']}s",
            flush=True,
        )
        cells = kept + rows
        write_json(
            args.out,
            {
                "benchmark": "device_matrix",
                "devices": sorted({c["device"] for c in cells}),
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "torch": torch.__version__,
                "erasekit": erasekit.__version__,
                "cells": cells,
            },
        )

    for device in devices:
        for dtype in DTYPES[device]:
            for method in methods:
                for family in get_method(method).families:
                    if not _in_kind(family, args.kind):
                        continue
                    record(method, family, device, dtype, run_cell(lambda: method_cell(method, family, device, dtype), device))
            commands = {**(command_cells(device, dtype) if args.kind != "causal-lm" else {}),
                        **(lm_command_cells(device, dtype) if args.kind != "image" else {})}  # fmt: skip
            for name, cell in commands.items():
                record(name, "causal-lm" if name.startswith("llm") else "sd", device, dtype, cell)
    print(f"wrote {args.out}: {sum(r['ok'] for r in rows)}/{len(rows)} cells ok")


if __name__ == "__main__":
    main()
