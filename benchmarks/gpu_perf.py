"""Two speed targets at SD-1.4 scale, meant for a GPU (issue 11): erasekit's ESD-x iteration against a
bare hand-written ESD-x step, and UCE of 100 concepts against the authors' script's algorithm.

Usage: python benchmarks/gpu_perf.py [--device cuda] [--esd-steps 20] [--concepts 100] [--smoke]
       [--out benchmarks/results/gpu_perf.json]

Both run on an SD-1.4-shaped pipeline with random weights (``closed_form.build_sd14_shaped``; no
download) in the same process, float32:

* **ESD-x**: seconds per training iteration of ``erasekit.erase(pipe, "esd", ...)`` (its training
  loop's own clock, from ``info.training``) against a hand-written step doing the same work — a frozen
  teacher partially denoises from noise with the concept (DDIM, guidance 3, a random stop in
  [0, ddim_steps)), predicts with and without the concept at the reached timestep, the student's
  attn2 parameters take one Adam step on ‖f_θ(x_t, c) − [f*(c) − η (f*(c) − f*(∅))]‖². Target: ≤ 1.2x.
* **UCE, 100 concepts**: ``erasekit.erase(pipe, "uce", ...)`` against the update of the authors'
  ``trainscripts/uce_sd_erase.py`` as that script computes it (each prompt encoded on its own, then
  per layer a Python loop over concepts accumulating λW + Σ v*cᵀ and λI + Σ ccᵀ, one inverse per
  layer), with the largest relative difference of the weights. Target: ≥ 4x faster, equal within 1e-4.

``--smoke`` runs both on the tiny SD pipeline to check the script itself (the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from closed_form import build_sd14_shaped, concept_names

import erasekit
from erasekit.core.io import write_json
from erasekit.testing import tiny_pipeline


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def teacher_point(pipe, teacher, cond, uncond, ddim_steps: int, stop: int, guidance: float, gen: torch.Generator):
    """Partially denoise pure noise with the frozen teacher to step ``stop``; returns (x_t, t)."""
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(ddim_steps, device=pipe.device)
    shape = (1, teacher.config.in_channels, teacher.config.sample_size, teacher.config.sample_size)
    x = torch.randn(shape, generator=gen).to(pipe.device)
    for t in sched.timesteps[:stop]:
        both = teacher(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        u, c = both.chunk(2)
        x = sched.step(u + guidance * (c - u), t, x).prev_sample
    t_end = sched.timesteps[stop] if stop < ddim_steps else torch.zeros((), dtype=torch.long, device=pipe.device)
    return x, t_end.reshape(1)


def bare_esd_seconds_per_step(pipe, prompt: str, steps: int, ddim_steps: int, eta: float = 2.0, lr: float = 5e-5) -> float:
    """The hand-written ESD-x loop; seconds per step (first step excluded as warm-up)."""
    device = pipe.device
    teacher = copy.deepcopy(pipe.unet).requires_grad_(False)
    student = copy.deepcopy(pipe.unet).requires_grad_(False)
    params = [p for n, p in student.named_parameters() if "attn2" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    with torch.no_grad():
        ids = pipe.tokenizer([prompt, ""], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
        cond, uncond = pipe.text_encoder(ids.input_ids.to(device))[0].chunk(2)
    times = []
    for k in range(steps + 1):
        sync(device)
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(k)
        stop = int(torch.randint(0, ddim_steps, (1,), generator=gen))
        xt, t = teacher_point(pipe, teacher, cond, uncond, ddim_steps, stop, 3.0, gen)
        with torch.no_grad():
            f_c = teacher(xt, t, encoder_hidden_states=cond).sample
            f_u = teacher(xt, t, encoder_hidden_states=uncond).sample
        target = f_c - eta * (f_c - f_u)
        loss = F.mse_loss(student(xt, t, encoder_hidden_states=cond).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if k:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def erasekit_esd_seconds_per_step(pipe, prompt: str, steps: int, ddim_steps: int) -> float:
    e = erasekit.erase(pipe, "esd", prompt, iterations=steps, ddim_steps=ddim_steps, mixed_precision="no", progress=False)
    training = e.info["training"]
    return training["seconds"] / training["steps_run"]


def authors_uce(pipe, concepts: list[str], lamb: float = 0.5, erase_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The update of the authors' ``uce_sd_erase.py`` as that script computes it (see the module docstring)."""
    modules = [(n, m) for n, m in pipe.unet.named_modules() if "attn2" in n and (n.endswith("to_v") or n.endswith("to_k"))]
    embeds = {}
    with torch.no_grad():
        for e in [*concepts, ""]:
            ids = pipe.tokenizer(
                e, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
            )
            emb = pipe.text_encoder(ids.input_ids.to(pipe.device))[0]
            embeds[e] = emb[:, int(ids.attention_mask.sum()) - 2, :]
        guide_out = {name: module(embeds[""]) for name, module in modules}
        out = {}
        for name, module in modules:
            w = module.weight
            mat1 = lamb * w
            mat2 = lamb * torch.eye(w.shape[1], device=w.device, dtype=w.dtype)
            for c in concepts:
                c_i = embeds[c].T
                v_star = guide_out[name].T
                mat1 = mat1 + erase_scale * (v_star @ c_i.T)
                mat2 = mat2 + erase_scale * (c_i @ c_i.T)
            out[f"unet.{name}.weight"] = mat1 @ torch.inverse(mat2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--esd-steps", type=int, default=20)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--concepts", type=int, default=100)
    ap.add_argument("--smoke", action="store_true", help="the tiny SD pipeline instead of SD-1.4 shapes")
    ap.add_argument("--out", default="benchmarks/results/gpu_perf.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    pipe = (tiny_pipeline("sd") if args.smoke else build_sd14_shaped()).to(device)
    pipe.set_progress_bar_config(disable=True)
    prompt = "cat" if args.smoke else concept_names(1)[0]

    bare = bare_esd_seconds_per_step(pipe, prompt, args.esd_steps, args.ddim_steps)
    ours = erasekit_esd_seconds_per_step(pipe, prompt, args.esd_steps, args.ddim_steps)
    print(f"ESD-x: erasekit {ours:.4f} s/it, bare {bare:.4f} s/it -> {ours / bare:.2f}x (target <= 1.2x)")

    concepts = ["cat", "dog", "car"][: args.concepts] if args.smoke else concept_names(args.concepts)
    sync(device)
    t0 = time.perf_counter()
    reference = authors_uce(pipe, concepts)
    sync(device)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    e = erasekit.erase(pipe, "uce", {"targets": concepts}, progress=False)
    sync(device)
    t_ours = time.perf_counter() - t0
    diff = max(
        float((e.weights[k].double().cpu() - v.double().cpu()).abs().max() / v.double().abs().max()) for k, v in reference.items()
    )
    print(f"UCE x{len(concepts)}: erasekit {t_ours:.3f} s, authors' algorithm {t_ref:.3f} s -> {t_ref / t_ours:.1f}x faster "
          f"(target >= 4x); max relative difference {diff:.1e}")  # fmt: skip
    write_json(
        args.out,
        {
            "benchmark": "gpu_perf",
            "device": str(device),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "model": "tiny sd (smoke)" if args.smoke else "SD-1.4-shaped, random weights",
            "esd_x": {
                "steps": args.esd_steps,
                "ddim_steps": args.ddim_steps,
                "erasekit_s_per_it": round(ours, 4),
                "bare_s_per_it": round(bare, 4),
                "ratio": round(ours / bare, 3),
            },  # fmt: skip
            "uce": {
                "concepts": len(concepts),
                "erasekit_s": round(t_ours, 4),
                "authors_algorithm_s": round(t_ref, 4),
                "speedup": round(t_ref / t_ours, 2),
                "max_relative_difference": diff,
            },  # fmt: skip
            "torch": torch.__version__,
            "erasekit": erasekit.__version__,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
