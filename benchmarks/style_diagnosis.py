"""Why styles resist erasure on the testbed: where a style reaches the UNet, and what erases it.

Usage: python benchmarks/style_diagnosis.py [--only probe,geometry,methods] [--out benchmarks/results/style_diagnosis.json]

Three measurements (docs/testbed.md, *Validity*, quotes them):

1. **probe** — transplant the text encoder's output at one group of token positions from a prompt
   with concept ``v`` into the same prompt with another value of the domain (``inject``: the share of
   images that now show ``v``), and the reverse (``remove``: the share that still show ``v`` after its
   prompt's positions are replaced by the other prompt's). Groups: the concept word itself, the word
   right after it, the remaining words, EOS, padding, and everything after the concept word. Both
   prompt frames: the testbed's ``a red striped star on a black background`` and UnlearnCanvas's
   ``an image of a star in striped style``. Styles and shapes both, so that the two domains compare.
2. **geometry** — the cosine structure of the concepts' text states (the mean off-diagonal cosine
   between concepts of one domain, at the concept word and at EOS) and the rank needed to separate one
   concept: the number of singular directions holding 90 % of the energy of the differences
   ``H(prompt with v) - H(same prompt with another value)`` over all positions and contexts.
3. **methods** — UCE's ``current`` variant (the concept's last-word key) against its ``2023`` variant
   (keys from the last word to the end), and ESD-x at more iterations, on ``striped``; evaluated as
   ``erasekit bench`` does (UA, IRA, CRA, 2 seeds x 6 contexts).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from erasekit.core.outputs import check_file_output, write_report
from erasekit.models import load_pipeline
from erasekit.testbeds.image import world
from erasekit.testbeds.image.classifier import LABEL_NAMES

SEEDS = (0, 1)
N_CONTEXTS = 6
GROUPS = ("word", "next", "rest", "eos", "padding", "after")


def frames(domain: str, value: str, ctx: dict[str, str]) -> dict[str, str]:
    """The two prompt frames for ``value`` of ``domain`` in the context ``ctx``."""
    a = {**ctx, domain: value}
    return {
        "testbed": f"a {a['colour']} {a['style']} {a['shape']} on a {a['background']} background",
        "unlearncanvas": f"an image of a {a['shape']} in {a['style']} style",
    }


def contexts(domain: str, n: int) -> list[dict[str, str]]:
    """``n`` deterministic assignments of the other domains (cycling with co-prime strides)."""
    strides = {"shape": 3, "style": 1, "colour": 5, "background": 2}
    return [
        {d: vals[(k * strides[d] + k) % len(vals)] for d, vals in world.DOMAIN_VALUES.items() if d != domain} for k in range(n)
    ]


@torch.no_grad()
def encode(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-encoder states ``[N, L, D]`` and token ids ``[N, L]`` (padded to the context); ``pipe`` is
    anything with a ``tokenizer`` and a ``text_encoder`` (a pipeline, or :class:`TextTower`)."""
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
    return pipe.text_encoder(tok.input_ids)[0], tok.input_ids


class TextTower:
    """A local CLIP text encoder and its tokenizer, for the geometry (``--clip DIR``: a Stable Diffusion
    pipeline directory, whose ``text_encoder`` and ``tokenizer`` are read, or a CLIP model directory)."""

    def __init__(self, directory: str) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        root = Path(directory)
        sub = (root / "text_encoder").is_dir()
        self.tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer" if sub else root)
        self.text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder" if sub else root, use_safetensors=True).eval()


def positions(ids: torch.Tensor, word_index: int, eos_id: int) -> dict[str, list[int]]:
    """Token positions of each group, for one prompt whose concept word sits at ``word_index``."""
    eos = int((ids == eos_id).nonzero()[0])
    n = len(ids)
    return {
        "word": [word_index],
        "next": [word_index + 1] if word_index + 1 < eos else [],
        "rest": list(range(word_index + 2, eos)),
        "eos": [eos],
        "padding": list(range(eos + 1, n)),
        "after": list(range(word_index + 1, n)),
    }


def word_position(pipe, prompt: str, word: str) -> int:
    """Index of the last token of ``word`` in ``prompt`` (one token per world word on the testbed; CLIP
    may split a word, and its last piece is the one that has read all of it)."""
    ids = pipe.tokenizer(prompt).input_ids
    before = pipe.tokenizer(prompt[: prompt.index(f" {word} ") + len(word) + 1]).input_ids
    assert ids[: len(before) - 1] == before[:-1], f"{word!r} does not tokenize on its own in {prompt!r}"
    return len(before) - 2  # the last token before the EOS that closes the prefix


@torch.no_grad()
def sample(pipe, embeds: torch.Tensor, seeds: list[int], steps: int, guidance: float) -> np.ndarray:
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    out = pipe(prompt_embeds=embeds, generator=gens, num_inference_steps=steps, guidance_scale=guidance, output_type="np")
    return (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)


def probe(pipe, classifier, steps: int, guidance: float) -> dict:
    """The transplant probe for styles and shapes in both frames -> ``{frame: {domain: {group: {...}}}}``."""
    eos_id = pipe.tokenizer.eos_token_id
    out: dict = {}
    for frame in ("testbed", "unlearncanvas"):
        out[frame] = {}
        for domain in ("style", "shape"):
            values = world.DOMAIN_VALUES[domain]
            n_ctx = N_CONTEXTS if domain == "style" else 3
            embeds, seeds, labels, groups_of, dirs = [], [], [], [], []
            for vi, v in enumerate(values):
                for k, ctx in enumerate(contexts(domain, n_ctx)):
                    other = values[(vi + 1 + k % (len(values) - 1)) % len(values)]
                    p_v, p_o = frames(domain, v, ctx)[frame], frames(domain, other, ctx)[frame]
                    (h_v, h_o), _ids = encode(pipe, [p_v, p_o])
                    ids_v = _ids[0]
                    pos = positions(ids_v, word_position(pipe, p_v, v), eos_id)
                    for g in GROUPS:
                        if not pos[g]:
                            continue
                        inj, rem = h_o.clone(), h_v.clone()
                        inj[pos[g]] = h_v[pos[g]]
                        rem[pos[g]] = h_o[pos[g]]
                        for direction, h in (("inject", inj), ("remove", rem)):
                            for s in SEEDS:
                                embeds.append(h)
                                seeds.append(1000 * vi + 10 * k + s)
                                labels.append(values.index(v))
                                groups_of.append(g)
                                dirs.append(direction)
            images = np.concatenate(
                [
                    sample(pipe, torch.stack(embeds[i : i + 128]), seeds[i : i + 128], steps, guidance)
                    for i in range(0, len(embeds), 128)
                ]
            )
            pred = classifier.predict(images)[domain]
            shows = pred == np.asarray(labels)
            table: dict = {}
            for g in GROUPS:
                row = {}
                for direction in ("inject", "remove"):
                    m = (np.asarray(groups_of) == g) & (np.asarray(dirs) == direction)
                    if m.any():
                        row[direction] = round(float(shows[m].mean()), 3)
                        row["n"] = int(m.sum())
                table[g] = row
            out[frame][domain] = table
            print(frame, domain, {g: table[g] for g in GROUPS})
    return out


def _r90(diffs: torch.Tensor) -> int:
    """Singular directions holding 90 % of the energy of the rows of ``diffs``."""
    s = torch.linalg.svdvals(diffs.double())
    e = (s**2).cumsum(0) / (s**2).sum()
    return int((e < 0.9).sum()) + 1


def geometry(pipe) -> dict:
    """Cosine structure of the concepts' text states and the rank that separates one concept."""
    eos_id = pipe.tokenizer.eos_token_id
    out: dict = {}
    for domain in ("style", "shape"):
        values = world.DOMAIN_VALUES[domain]
        word_states, eos_states, ranks = [], [], {}
        ctxs = contexts(domain, 12)
        for v in values:
            prompts = [frames(domain, v, c)["testbed"] for c in ctxs]
            h, ids = encode(pipe, prompts)
            w = [word_position(pipe, p, v) for p in prompts]
            e = [int((row == eos_id).nonzero()[0]) for row in ids]
            word_states.append(torch.stack([h[i, w[i]] for i in range(len(prompts))]).mean(0))
            eos_states.append(torch.stack([h[i, e[i]] for i in range(len(prompts))]).mean(0))
            diffs = []
            for other in values:
                if other != v:
                    ho, _ = encode(pipe, [frames(domain, other, c)["testbed"] for c in ctxs])
                    diffs.append((h - ho).reshape(-1, h.shape[-1]))
            ranks[v] = _r90(torch.cat(diffs))

        def mean_cos(states: list[torch.Tensor]) -> float:
            x = torch.nn.functional.normalize(torch.stack(states), dim=-1)
            c = x @ x.T
            n = len(states)
            return round(float((c.sum() - c.diagonal().sum()) / (n * n - n)), 3)

        out[domain] = {
            "mean_cosine_word": mean_cos(word_states),
            "mean_cosine_eos": mean_cos(eos_states),
            "rank90_of_differences": ranks,
            "width": int(word_states[0].numel()),
        }
        print(domain, out[domain])
    return out


def methods(pipe, classifier, model: str = "testbed") -> dict:
    """UCE current vs 2023 and ESD-x at 150 / 600 iterations on ``striped`` (bench-style evaluation)."""
    from erasekit.api import erase
    from erasekit.evaluation import evaluate_on_testbed

    runs = {
        "uce current": ("uce", {}),
        "uce 2023": ("uce", {"variant": "2023"}),
        "esd-x 150 it, lr 1e-4": ("esd", {"ddim_steps": 20, "iterations": 150, "lr": 1e-4}),
        "esd-x 600 it, lr 1e-4": ("esd", {"ddim_steps": 20, "iterations": 600, "lr": 1e-4}),
        "esd-u 150 it, lr 1e-4": ("esd", {"ddim_steps": 20, "iterations": 150, "lr": 1e-4, "train_method": "esd-u"}),
    }
    out: dict = {}
    cache: dict = {}
    for name, (method, params) in runs.items():
        t0 = time.time()
        erasure = erase(pipe, method, {"targets": ["striped"]}, model=model, progress=False, **params)
        rep = evaluate_on_testbed(
            pipe, classifier, ["striped"], erasure=erasure, seeds=2, n_contexts=6, progress=False, base_cache=cache
        )
        t = rep["targets"][0]
        out[name] = {
            "method": method,
            "params": params,
            **{k: round(t[k]["rate"], 3) for k in ("ua", "ira", "cra")},
            "pixel_change": round(float(rep["fidelity"]["pixel_change"]), 4),
            "seconds": round(time.time() - t0, 1),
        }
        print(name, out[name])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="probe,geometry,methods")
    ap.add_argument("--out", default="benchmarks/results/style_diagnosis.json")
    ap.add_argument("--model", default="testbed", help="a testbed pipeline directory (e.g. a retrained candidate)")
    ap.add_argument("--clip", default=None, help="a local CLIP text-encoder directory: its geometry beside the testbed's")
    args = ap.parse_args()
    check_file_output(args.out, "style-diagnosis", (".json",))  # before the work, not after
    torch.manual_seed(0)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    from erasekit.api import load_judge

    classifier = load_judge(args.model)
    steps, guidance = 20, 3.0
    t0 = time.time()
    result: dict = {
        "benchmark": "style_diagnosis",
        "model": args.model if args.model == "testbed" else Path(args.model).name,
        "sampling": {"steps": steps, "guidance_scale": guidance},
        "seeds_per_cell": len(SEEDS),
        "labels": {d: list(LABEL_NAMES[d]) for d in ("style", "shape")},
    }
    parts = {
        "probe": lambda: probe(pipe, classifier, steps, guidance),
        "geometry": lambda: geometry(pipe),
        "clip_geometry": lambda: geometry(TextTower(args.clip)),
        "methods": lambda: methods(pipe, classifier, args.model),
    }
    names = args.only.split(",") + (["clip_geometry"] if args.clip else [])
    for name in names:
        result[name] = parts[name]()
        result["seconds"] = round(time.time() - t0, 1)
        write_report(args.out, result, "style-diagnosis")  # after each part, so a stopped run keeps what it measured
    print("wrote", args.out)


if __name__ == "__main__":
    main()
