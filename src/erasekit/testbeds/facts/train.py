"""Train the fact-world language model (``testbed-llm``) and its oracles from scratch on the CPU.

The model is a small GPT-2 (``transformers.GPT2LMHeadModel``, word-level tokenizer from
:mod:`.tokenizer`) trained as a language model on the whole token sequence of

- every training question-answer pair (two templates per fact, :meth:`FactWorld.qa`),
- one freshly shuffled biography per author and epoch (so facts are stored in several orders and
  phrasings, which is what makes them extractable by questions never seen for that fact),
- per author and epoch one expert and one novice context statement and one digression
  (:meth:`FactWorld.statement`, :meth:`FactWorld.digression`: the signal ELM reads), and
- filler sentences about no author (the general language whose perplexity is utility).

An **oracle** (``exclude="forget05"``) is the same run without any text about the authors of that
forget split: the model unlearning is compared with. Checkpoints (safetensors) every
``checkpoint_every`` steps make ``resume=True`` continue a stopped run; the result is a directory
that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load offline, with a ``testbed.json`` that records
the world, the excluded split and the reference model.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from erasekit.core.errors import ConfigError
from erasekit.core.io import atomic_path, load_checkpoint, save_checkpoint, write_json
from erasekit.core.outputs import check_dir_output, claim_collection, write_manifest
from erasekit.models.lm_batches import encode_texts
from erasekit.testbeds.facts.factworld import REFUSALS, SPLITS, FactWorld, elm_defaults
from erasekit.testbeds.facts.tokenizer import build_tokenizer


@dataclass
class LLMTrainConfig:
    """Every knob of a fact-world training run (defaults = the shipped ``testbed-llm``)."""

    seed: int = 0
    n_authors: int = 200
    n_filler: int = 2_000
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 0.01
    checkpoint_every: int = 500
    #: The learning rate this model recommends to unlearning methods and to the relearning attack
    #: (``testbed.json`` ``unlearning_defaults``): the papers' 1e-5 suits billions of parameters, not
    #: 3 M. A scan of GA / NPO / GradDiff on forget01 under the loop's schedule (one epoch of warm-up,
    #: linear decay to 0, as open-unlearning) at 1e-4 … 2e-3: 6e-4 forgets 75-95 % of the facts while
    #: keeping 82-92 % of the retain answers (benchmarks/results/llm_scans.json). Under a constant lr
    #: the same criterion chose 3e-4, which the linear decay halves on average.
    unlearning_lr: float = 6e-4
    #: A forget split (``forget01``, ``forget05``, ``forget10``) whose authors are left out: an oracle.
    exclude: str | None = None

    @staticmethod
    def smoke() -> "LLMTrainConfig":
        """A tiny run for tests."""
        return LLMTrainConfig(n_authors=20, n_filler=40, n_layer=1, n_embd=32, n_head=2, epochs=1, batch_size=16,
                              warmup=2, checkpoint_every=3)  # fmt: skip


def unlearning_defaults(cfg: LLMTrainConfig) -> dict:
    """What a fact-world model recommends to unlearning methods (``testbed.json``): the learning
    rate for its scale, ELM's sentences of the world (:func:`~.factworld.elm_defaults`) and the
    world's refusals for IDK-DPO (English ones are unknown words to its closed vocabulary)."""
    return {"lr": cfg.unlearning_lr, **elm_defaults(), "refusals": list(REFUSALS)}


def check_split(split: str | None) -> str | None:
    """``split`` when it names a forget split, else a one-line :class:`ConfigError`."""
    if split is not None and split not in SPLITS:
        raise ConfigError(f"--exclude {split!r}: not a forget split of the fact world; choose from {', '.join(SPLITS)}")
    return split


def model_config(cfg: LLMTrainConfig, vocab_size: int, tokenizer):
    """The GPT-2 configuration of the fact-world model (tied embeddings, 128 positions)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size, n_positions=128, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, loss_type="ForCausalLM",
    )  # fmt: skip


def training_texts(world: FactWorld, exclude: str | None, epoch: int, n_filler: int) -> list[str]:
    """The texts of one epoch: training QA pairs, a new biography, an expert and a novice statement
    and a digression per author, filler; shuffled.
    Authors of the ``exclude`` split contribute nothing."""
    rng = random.Random(world.seed * 1_000_003 + epoch)
    skip = {a.index for a in world.forget(exclude)} if exclude else set()
    authors = [a for a in world.authors if a.index not in skip]
    texts = [f"{q.question} {q.answer}" for a in authors for q in world.qa(a)]
    texts += [world.biography(a, rng) for a in authors]
    texts += [world.statement(a, rng, expert) for a in authors for expert in (True, False)]
    texts += [world.digression(a, rng) for a in authors]
    texts += world.filler(n_filler, seed=1)
    rng.shuffle(texts)
    return texts


def epoch_batches(texts: list[str], batch_size: int, seed: int) -> list[list[str]]:
    """``texts`` (already shuffled) cut into batches of similar length, in shuffled order: each pool
    of 50 batches is sorted by length before cutting, so short questions are not padded to the
    length of a biography (about five times fewer padded positions)."""
    pool = batch_size * 50
    batches = []
    for start in range(0, len(texts), pool):
        chunk = sorted(texts[start : start + pool], key=len)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    random.Random(seed).shuffle(batches)
    return batches


class LLMTrainer:
    """Trains the fact-world model in ``workdir`` (checkpoints, log) and exports it (module docstring)."""

    def __init__(self, workdir: str | Path, cfg: LLMTrainConfig, progress: bool = True, log=print) -> None:
        check_split(cfg.exclude)
        self.dir = claim_collection(workdir, "testbed-train", what="fact-world training directory")
        self.cfg, self.progress, self.log = cfg, progress, log
        self.world = FactWorld(cfg.n_authors, seed=cfg.seed)
        self.tokenizer = build_tokenizer(self.world)

    def batches(self, epoch: int) -> list[list[str]]:
        """The batches of texts of ``epoch`` (deterministic, so a resumed run sees the same ones)."""
        texts = training_texts(self.world, self.cfg.exclude, epoch, self.cfg.n_filler)
        return epoch_batches(texts, self.cfg.batch_size, seed=self.cfg.seed * 7_919 + epoch)

    def run(self, resume: bool = False, out: str | os.PathLike | None = None) -> Path:
        """Train (continuing from the last checkpoint when ``resume``) and export to ``out``."""
        from transformers import GPT2LMHeadModel

        out = Path(out) if out is not None else self.dir / "model"
        check_dir_output(out, "pipeline", what="fact-world model directory")
        cfg = self.cfg
        config_path = self.dir / "config.json"
        if resume and config_path.exists() and json.loads(config_path.read_text()) != json.loads(json.dumps(asdict(cfg))):
            self.log("warning: resuming with a configuration that differs from the run's saved config.json")
        write_json(config_path, asdict(cfg))
        torch.manual_seed(cfg.seed)
        model = GPT2LMHeadModel(model_config(cfg, len(self.tokenizer), self.tokenizer))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
        per_epoch = len(self.batches(0))
        total = per_epoch * cfg.epochs
        step = self._load(model, opt) if resume else 0
        t0, losses = time.time(), []
        bar = tqdm(total=total, initial=step, desc="fact-world LM", disable=not self.progress)
        model.train()
        while step < total:
            epoch, offset = divmod(step, per_epoch)
            batches = self.batches(epoch)
            for i in range(offset, per_epoch):
                batch = encode_texts(self.tokenizer, batches[i])
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * _schedule(step, total, cfg.warmup)
                loss = model(**batch).loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"fact-world training diverged at step {step} (loss {loss.item()}); lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step += 1
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
                if step % cfg.checkpoint_every == 0 or step == total:
                    self._save(model, opt, step)
        bar.close()
        seconds = round(time.time() - t0, 1)
        write_json(self.dir / "train.done", {"steps": total, "seconds": seconds, "final_loss": losses[-1] if losses else None})
        self.export(model, out)
        self.log(f"fact-world model trained ({total} steps, {seconds:.0f}s) and written to {out}")
        return out

    def export(self, model, out: Path) -> None:
        """Write the model, its tokenizer and ``testbed.json`` atomically as one directory."""
        cfg = self.cfg
        model.eval()
        with atomic_path(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            info = {"world": "fact-world", "n_authors": cfg.n_authors, "seed": cfg.seed, "excluded": cfg.exclude,
                    "unlearning_defaults": unlearning_defaults(cfg)}  # fmt: skip
            if cfg.exclude:
                info["reference"] = "testbed-llm"
            write_json(Path(tmp) / "testbed.json", info)
            write_manifest(tmp, "pipeline", files=True)

    def _save(self, model, opt, step: int) -> None:
        save_checkpoint(self.dir, "llm", step, {"model": model}, opt)

    def _load(self, model, opt) -> int:
        step = load_checkpoint(self.dir, "llm", {"model": model}, opt)
        if step:
            self.log(f"[llm] resuming from step {step}")
        return step


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))
