"""UCE on an SD-1.4-shaped pipeline with random weights: time for 1, 10, 100, 1000 concepts.

Usage: python benchmarks/closed_form.py [--counts 1,10,100,1000] [--out benchmarks/results/closed_form.json]

The pipeline is built from SD-1.4's published shapes (no download): UNet2DConditionModel(sample_size=64,
cross_attention_dim=768, attention_head_dim=8) — 16 cross-attention layers, 32 K/V matrices — and a
12-layer, 768-wide CLIP text encoder. Reported separately: prompt encoding, the solve (shared
statistics + per-layer updates), the total, peak memory (RSS high-water mark of this process), and
the same edit computed straightforwardly (one full d×d solve per matrix, ``ridge_edit_reference``)
with the largest relative difference between the two.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
import time

import torch

from erasekit import __version__
from erasekit.core.io import write_json
from erasekit.core.request import ErasureRequest, Target
from erasekit.methods.diffusion.closed_form import PromptPlan, ridge_edit_reference, ridge_gain, token_keys
from erasekit.models.diffusion import get_adapter

ADJECTIVES = ["red", "blue", "old", "tiny", "giant", "golden", "wooden", "frozen", "ancient", "modern", "dark", "bright",
              "silver", "purple", "quiet", "wild", "sleepy", "shiny", "broken", "royal", "paper", "glass", "stone", "neon",
              "misty", "rusty", "happy", "angry", "lonely", "electric", "cosmic", "velvet"]  # fmt: skip
NOUNS = ["cat", "dog", "castle", "robot", "dragon", "tree", "river", "car", "lamp", "violin", "mountain", "ship", "owl",
         "garden", "tower", "painter", "knight", "forest", "clock", "bridge", "mask", "crown", "whale", "fox", "kettle",
         "planet", "rose", "train", "bicycle", "cathedral", "lighthouse", "teapot"]  # fmt: skip


def concept_names(n: int) -> list[str]:
    names = [f"{a} {b}" for a, b in itertools.product(ADJECTIVES, NOUNS)]
    if n > len(names):
        raise ValueError(f"at most {len(names)} concept names")
    return names[:n]


def build_sd14_shaped():
    """SD-1.4 shapes with random weights (UNet 860M parameters, CLIP ViT-L/14 text tower)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from erasekit.testbeds.image.tokenizer import build_vocab_and_merges
    from erasekit.testbeds.image.world import vocabulary

    torch.manual_seed(0)
    # A CLIP BPE tokenizer whose merges know the benchmark's words (other text falls back to bytes).
    vocab, merges = build_vocab_and_merges(tuple(dict.fromkeys([*vocabulary(), *ADJECTIVES, *NOUNS])))
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()  # fmt: skip
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4).eval()  # fmt: skip
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=DDIMScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(pipe, n: int, lam: float = 0.5) -> dict:
    adapter = get_adapter(pipe)
    projections = adapter.text_projections(pipe)
    request = ErasureRequest([Target(c) for c in concept_names(n)])
    plan = PromptPlan.build(request, default_anchor="")
    t0 = time.perf_counter()
    enc = adapter.encode(pipe, plan.prompts, upto="real")
    ce, cg, cp = token_keys(enc, plan, "last")
    t1 = time.perf_counter()
    gain = ridge_gain(ce, cg, cp, lam=lam)
    new = {p.weight_key: gain.edit(p.module.weight) for p in projections}
    t2 = time.perf_counter()
    ref = {p.weight_key: ridge_edit_reference(p.module.weight, ce, cg, cp, lam) for p in projections}
    t3 = time.perf_counter()
    rel = max(float((new[k].double() - ref[k].double()).norm() / ref[k].double().norm()) for k in new)
    return {
        "concepts": n,
        "prompts": len(plan.prompts),
        "encoded_positions": int(enc.tokens.shape[1]),
        "matrices": len(projections),
        "solver": gain.solver,
        "encode_seconds": round(t1 - t0, 4),
        "solve_seconds": round(t2 - t1, 4),
        "total_seconds": round(t2 - t0, 4),
        "straightforward_solve_seconds": round(t3 - t2, 4),
        "max_relative_difference": rel,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,10,100,1000")
    ap.add_argument("--out", default="benchmarks/results/closed_form.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    pipe = build_sd14_shaped()
    build = time.perf_counter() - t0
    print(
        f"built SD-1.4-shaped pipeline in {build:.1f}s ({sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.0f}M UNet parameters)"
    )
    run(pipe, 2)  # warm-up
    rows = []
    with torch.no_grad():
        for n in (int(c) for c in args.counts.split(",")):
            row = run(pipe, n)
            rows.append(row)
            print(
                f"{n:>5} concepts: encode {row['encode_seconds']:.3f}s  solve {row['solve_seconds']:.3f}s  total {row['total_seconds']:.3f}s  "
                f"| straightforward solve {row['straightforward_solve_seconds']:.3f}s  max rel diff {row['max_relative_difference']:.1e}  peak {row['peak_rss_mib']:.0f} MiB"
            )
    write_json(args.out, {
        "benchmark": "closed_form_uce_sd14_shaped",
        "method": "uce (last word token, lamb 0.5, erase 1, preserve none, guide '' = BOS, to_k and to_v)",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "erasekit": __version__,
        "build_seconds": round(build, 1),
        "results": rows,
    })  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
