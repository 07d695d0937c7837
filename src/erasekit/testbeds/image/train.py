"""Train the testbed from scratch: judge, dataset, VAE, text encoder + UNet, then export.

Stages run in order inside a work directory; each writes its result there, and long stages write
periodic checkpoints (safetensors, never pickle) so ``resume=True`` continues where a run stopped:

1. ``classifier`` - the independent judge (classifier.py);
2. ``data``       - render the training images with exact labels;
3. ``vae``        - AutoencoderKL, reconstruction + small KL;
4. ``latents``    - encode the dataset once (posterior mean and std), fix the latent scaling factor;
5. ``decoder``    - the VAE decoder refined alone (encoder frozen, so the latents stay valid):
                    sharper dots and strokes;
6. ``text``       - with ``text_encoder="contrastive"`` only: the CLIPTextModel pre-trained as CLIP's
                    text tower, by a symmetric InfoNCE loss between its pooled (EOS) state and a small
                    image tower's embedding of the caption's image (images of identical labels count
                    as positives), plus, with ``text_token_loss`` > 0, a per-token loss that makes
                    every position's state name the attributes said so far (:func:`token_targets`);
                    the UNet stage then keeps it frozen, as Stable Diffusion keeps CLIP;
7. ``unet``       - UNet2DConditionModel trained on v-prediction (SD's schedule rescaled to zero
                    terminal SNR) with the text encoder (jointly, or frozen after ``text``), captions
                    resampled every step, 10 % empty captions for classifier-free guidance, min-SNR-5
                    loss weights, EMA;
8. ``export``     - a diffusers StableDiffusionPipeline directory (EMA weights, DDIM scheduler).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from erasekit.core.errors import ConfigError
from erasekit.core.io import atomic_path, load_checkpoint, load_tensors, save_checkpoint, save_tensors, write_json
from erasekit.core.outputs import check_dir_output, claim_collection, shown_path, write_manifest
from erasekit.testbeds.image import world
from erasekit.testbeds.image.classifier import ClassifierTrainConfig, evaluate_classifier, save_classifier, train_classifier
from erasekit.testbeds.image.model import RECOMMENDED_SAMPLING, build_text_encoder, build_train_scheduler, build_unet, build_vae
from erasekit.testbeds.image.tokenizer import build_tokenizer, save_tokenizer

STAGES = ("classifier", "data", "vae", "latents", "decoder", "text", "unet", "export")
TEXT_ENCODER_TRAINING = ("joint", "contrastive")
PADDING_TRAINING = ("prompt", "shuffled")


@dataclass
class TrainConfig:
    """Every knob of a testbed training run (defaults = the shipped testbed)."""

    seed: int = 0
    n_images: int = 50_000
    classifier: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)
    vae_steps: int = 1_500
    vae_batch: int = 48
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    decoder_steps: int = 800
    unet_steps: int = 4_000
    unet_batch: int = 128
    unet_lr: float = 1e-3
    unet_warmup: int = 200
    cfg_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    noise_offset: float = 0.0  # per-channel constant added to the noise (not needed with a zero-terminal-SNR schedule)
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    #: How the text encoder learns: ``joint`` (with the UNet, the shipped testbed) or ``contrastive``
    #: (pre-trained CLIP-style on the world's image-caption pairs, then frozen while the UNet trains).
    #: A jointly trained encoder spreads a prompt's attributes into its later tokens and padding, which a
    #: frozen CLIP does not (docs/testbed.md, *Validity*).
    text_encoder: str = "joint"
    #: 1 000: the pilots' (InfoNCE loss 0.97; the probe of docs/testbed.md *Validity* ran on it).
    text_steps: int = 1_000
    text_batch: int = 256
    text_lr: float = 1e-3
    #: Weight λ of the per-token objective beside InfoNCE (``contrastive`` only; 0: InfoNCE alone, as
    #: the first candidate). InfoNCE trains the encoder only through its pooled (EOS) state, so the
    #: states the UNet reads at the words carried the attributes weakly (docs/testbed.md, *The retrained
    #: candidate*); the token loss asks every position to name, through a linear probe per domain, the
    #: value of each attribute said at or before it (:func:`token_targets`).
    text_token_loss: float = 0.0
    #: What the UNet sees at the positions after a caption's end token while it trains: ``prompt``
    #: (the caption's own padding states, the shipped testbed) or ``shuffled`` (the padding states of
    #: another caption in the batch, so that the padding carries nothing the UNet could learn to read
    #: a concept from, as Stable Diffusion's UNet hardly reads CLIP's padding; see
    #: :func:`shuffle_padding`). Sampling is unchanged: a pipeline always encodes the prompt's own.
    padding: str = "prompt"
    #: Concepts whose images are left out of the training data (an *oracle*: a model that never
    #: learned them, the gold standard an erasure is compared with; world.showing says which images).
    exclude: tuple[str, ...] = ()
    #: A testbed pipeline directory whose judge and VAE are reused instead of trained (the oracle
    #: shares the testbed's codec and judge, so the two are compared through the same image space and
    #: judged by the same classifier; only the text encoder and UNet are retrained).
    codec_from: str | None = None

    @staticmethod
    def smoke() -> "TrainConfig":
        """A few steps of everything, for tests."""
        return TrainConfig(
            n_images=256,
            classifier=ClassifierTrainConfig(n_images=256, steps=3, batch_size=16),
            vae_steps=3,
            vae_batch=8,
            decoder_steps=2,
            unet_steps=6,
            unet_batch=8,
            unet_warmup=2,
            checkpoint_every=3,
            text_steps=3,
            text_batch=8,
        )

    def __post_init__(self) -> None:
        if self.text_encoder not in TEXT_ENCODER_TRAINING:
            raise ConfigError(f"text_encoder must be one of {', '.join(TEXT_ENCODER_TRAINING)}, got {self.text_encoder!r}")
        if self.padding not in PADDING_TRAINING:
            raise ConfigError(f"padding must be one of {', '.join(PADDING_TRAINING)}, got {self.padding!r}")
        if not self.text_token_loss >= 0:
            raise ConfigError(f"text_token_loss must be a weight >= 0, got {self.text_token_loss!r}")
        if self.text_token_loss and self.text_encoder != "contrastive":
            raise ConfigError("the per-token loss trains a pre-trained text encoder: pass it with text_encoder='contrastive'")


class Trainer:
    """Runs the stages of :class:`TrainConfig` in ``workdir``; see the module docstring."""

    def __init__(self, workdir: str | Path, cfg: TrainConfig, progress: bool = True, log=print) -> None:
        self.dir = claim_collection(workdir, "testbed-train", what="testbed training directory")
        self.cfg = cfg
        self.progress = progress
        self.log = log
        torch.manual_seed(cfg.seed)

    def _codec(self) -> Path:
        """The pipeline directory whose judge and VAE this run reuses (``codec_from``: a model name or path)."""
        from erasekit.models import resolve_model

        if self.cfg.codec_from is None:
            raise ConfigError("this run trains its own judge and VAE (no codec_from)")
        return Path(resolve_model(self.cfg.codec_from))

    # -- bookkeeping -------------------------------------------------------------------------------
    def done(self, stage: str) -> bool:
        return (self.dir / f"{stage}.done").exists()

    def mark(self, stage: str, info: dict) -> None:
        write_json(self.dir / f"{stage}.done", info)

    def run(self, resume: bool = False, stages: tuple[str, ...] = STAGES, out: str | os.PathLike | None = None) -> Path:
        """Run ``stages`` (skipping completed ones when ``resume``); return the exported pipeline dir."""
        out = Path(out) if out is not None else None
        if "export" in stages:  # the export target is checked before hours of training, not after
            check_dir_output(out or self.dir / "pipeline", "pipeline", what="testbed pipeline directory")
        config_path = self.dir / "config.json"
        if resume and config_path.exists():
            saved = json.loads(config_path.read_text())
            if saved != json.loads(json.dumps(asdict(self.cfg))):
                self.log("warning: resuming with a configuration that differs from the run's saved config.json")
        write_json(config_path, asdict(self.cfg))
        for stage in stages:
            if resume and self.done(stage):
                self.log(f"[{stage}] already done, skipping")
                continue
            t0 = time.time()
            info = getattr(self, f"stage_{stage}")(resume) if stage != "export" else self.stage_export(out)
            info = dict(info or {}, seconds=round(time.time() - t0, 1))
            self.mark(stage, info)
            self.log(f"[{stage}] done in {info['seconds']:.0f}s {json.dumps({k: v for k, v in info.items() if k != 'seconds'})}")
        return out or self.dir / "pipeline"

    # -- stages ------------------------------------------------------------------------------------
    def stage_classifier(self, resume: bool) -> dict:
        if self.cfg.codec_from:
            source = self._codec() / "classifier.safetensors"
            save_tensors(self.dir / "classifier.safetensors", load_tensors(source))
            return {"reused": shown_path(source)}
        model = train_classifier(self.cfg.classifier, progress=self.progress)
        save_classifier(model, self.dir / "classifier.safetensors")
        return {"accuracy": evaluate_classifier(model, n=2000)}

    def stage_data(self, resume: bool) -> dict:
        rng = np.random.default_rng(self.cfg.seed + 1)
        labels = world.sample_labels_without(self.cfg.n_images, rng, tuple(self.cfg.exclude))
        images = world.render_chunked(labels, rng, progress=self.progress)
        tensors = {f: torch.as_tensor(getattr(labels, f)) for f in labels.__dataclass_fields__}
        tensors["images"] = torch.from_numpy(images)
        save_tensors(self.dir / "data.safetensors", tensors)
        return {
            "images": int(len(images)),
            "watermarked": int(labels.watermark.sum()),
            "characters": int((labels.character >= 0).sum()),
            **({"excluded": list(self.cfg.exclude)} if self.cfg.exclude else {}),
        }

    def _data(self) -> tuple[dict[str, torch.Tensor], world.LabelBatch]:
        """The rendered training data (``data.safetensors``) and its labels."""
        data = load_tensors(self.dir / "data.safetensors")
        return data, world.LabelBatch(*(data[f].numpy() for f in world.LabelBatch.__dataclass_fields__))

    def _images(self) -> torch.Tensor:
        return load_tensors(self.dir / "data.safetensors")["images"].permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def stage_vae(self, resume: bool) -> dict:
        cfg = self.cfg
        if cfg.codec_from:
            source = self._codec() / "vae" / "diffusion_pytorch_model.safetensors"
            save_tensors(self.dir / "ckpt-vae.safetensors", load_tensors(source))
            return {"reused": shown_path(source)}
        x_all = self._images()
        vae = build_vae()
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        start = self._load_ckpt("vae", {"vae": vae}, opt) if resume else 0
        gen = torch.Generator().manual_seed(cfg.seed + 2 + start)
        vae.train()
        bar = tqdm(
            range(start, cfg.vae_steps), desc="vae", disable=not self.progress, mininterval=2, initial=start, total=cfg.vae_steps
        )
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = cfg.vae_lr * _cosine(step, cfg.vae_steps, warmup=50)
            x = x_all[torch.randint(0, len(x_all), (cfg.vae_batch,), generator=gen)]
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample(generator=gen)).sample
            # L2 keeps colours exact, L1 keeps thin strokes sharp; KL keeps the latent space smooth.
            loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + cfg.vae_kl * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.5f}", refresh=False)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.vae_steps:
                self._save_ckpt("vae", step + 1, {"vae": vae}, opt)
        vae.eval()
        with torch.no_grad():
            x = x_all[:512]
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        return {"recon_mse": float(F.mse_loss(rec, x))}

    def stage_decoder(self, resume: bool) -> dict:
        """Refine the decoder on exact latents: z ~ q(z|x) from the frozen encoder, loss MSE + 0.5 L1."""
        cfg = self.cfg
        if cfg.codec_from:
            return {"reused": shown_path(self._codec())}
        x_all = self._images()
        vae = build_vae()
        vae.load_state_dict(load_tensors(self.dir / "ckpt-vae.safetensors"))
        lat = load_tensors(self.dir / "latents.safetensors")
        params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
        for p in vae.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=cfg.vae_lr * 0.5, weight_decay=0.0)
        gen = torch.Generator().manual_seed(cfg.seed + 4)
        vae.train()

        def recon_error() -> float:
            with torch.no_grad():
                return float(F.mse_loss(vae.decode(lat["mean"][:512]).sample, x_all[:512]))

        before = recon_error()
        bar = tqdm(range(cfg.decoder_steps), desc="decoder", disable=not self.progress, mininterval=2)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = cfg.vae_lr * 0.5 * _cosine(step, cfg.decoder_steps, warmup=50)
            idx = torch.randint(0, len(x_all), (cfg.vae_batch,), generator=gen)
            z = lat["mean"][idx] + lat["std"][idx] * torch.randn(lat["mean"][idx].shape, generator=gen)
            x = x_all[idx]
            rec = vae.decode(z).sample
            loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.5f}", refresh=False)
        vae.eval()
        after = recon_error()
        save_tensors(self.dir / "ckpt-vae.safetensors", vae.state_dict())
        return {"recon_mse_before": before, "recon_mse_after": after}

    def stage_latents(self, resume: bool) -> dict:
        vae = build_vae()
        vae.load_state_dict(load_tensors(self.dir / "ckpt-vae.safetensors"))
        vae.eval()
        x_all = self._images()
        means, stds = [], []
        with torch.no_grad():
            for i in tqdm(range(0, len(x_all), 512), desc="encode", disable=not self.progress):
                dist = vae.encode(x_all[i : i + 512]).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
        mean, std = torch.cat(means), torch.cat(stds)
        scaling = float(1.0 / torch.sqrt(mean.var() + (std**2).mean()))
        if self.cfg.codec_from:  # the reused codec keeps its latent scale
            scaling = float(json.loads((self._codec() / "vae" / "config.json").read_text())["scaling_factor"])
        save_tensors(self.dir / "latents.safetensors", {"mean": mean, "std": std}, metadata={"scaling_factor": repr(scaling)})
        return {"scaling_factor": scaling}

    def stage_text(self, resume: bool) -> dict:
        """CLIP-style pre-training of the text encoder (``text_encoder="contrastive"``; else nothing).

        L = ½ [CE(s · T Iᵀ, Y) + CE(s · I Tᵀ, Yᵀ)] with T, I the L2-normalised projections of the
        captions' pooled (EOS) states and of their images' embeddings (a small CNN), s = exp(logit
        scale) (CLIP's, initialised at 1/0.07 and capped at 100), and Y the row-normalised matrix of
        positives: images whose labels are identical (the world repeats label combinations, so a batch
        holds true duplicates that plain InfoNCE would push apart). The image tower and the projections
        are discarded; only the encoder is kept (``text-encoder.safetensors``), as SD keeps CLIP's text tower.

        With λ = ``text_token_loss`` > 0 the loss is L + λ · mean CE(W_d h_t, y_{t,d}) over every
        position t up to the end token and every domain d with a target (:func:`token_targets`): the
        state h_t must name, through a linear probe W_d (discarded too), the value of d last said at or
        before t (synonyms alike). This is a deliberate stand-in for what a CLIP trained on 400 M pairs
        has and a 1 000-step InfoNCE on the world does not: word states that carry their word's meaning
        for the positions after them, which is what the UNet reads once the padding is shuffled.
        Checkpoints every ``checkpoint_every`` steps (``ckpt-text``) let ``resume`` continue the stage.
        """
        cfg = self.cfg
        if cfg.text_encoder != "contrastive":
            return {"skipped": f"text_encoder={cfg.text_encoder!r}: trained with the UNet"}
        from erasekit.testbeds.image.classifier import TestbedClassifier

        tokenizer = build_tokenizer()
        text_encoder = build_text_encoder(tokenizer)
        width = text_encoder.config.hidden_size
        image_tower = TestbedClassifier()
        text_proj, image_proj = torch.nn.Linear(width, width, bias=False), torch.nn.Linear(256, width, bias=False)
        scale = torch.nn.Module()
        scale.logit = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        modules = {"text_encoder": text_encoder, "image_tower": image_tower, "text_proj": text_proj, "image_proj": image_proj,
                   "logit_scale": scale}  # fmt: skip
        table = token_value_table(tokenizer)
        sizes = [len(values) for values in TOKEN_DOMAIN_VALUES.values()]
        if cfg.text_token_loss:
            modules["token_heads"] = torch.nn.Linear(width, sum(sizes))
        params = [p for m in modules.values() for p in m.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=0.1)
        start = self._load_ckpt("text", modules, opt) if resume else 0
        data, labels = self._data()
        images = data["images"]
        key = np.stack([labels.shape, labels.style, labels.colour, labels.background, labels.watermark, labels.character], 1)
        rng = np.random.default_rng(cfg.seed + 5 + start)
        losses: list[float] = []
        token_losses: list[float] = []
        bar = tqdm(range(start, cfg.text_steps), desc="text", disable=not self.progress, mininterval=2, initial=start,
                   total=cfg.text_steps)  # fmt: skip
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = cfg.text_lr * _cosine(step, cfg.text_steps, warmup=min(200, cfg.text_steps // 10))
            idx = rng.integers(0, len(labels), cfg.text_batch)
            captions = [world.caption_for(labels, int(i), rng) for i in idx]
            ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
            out = text_encoder(ids)
            t = F.normalize(text_proj(out.pooler_output), dim=-1)
            x = images[torch.as_tensor(idx)].permute(0, 3, 1, 2).float() / 127.5 - 1.0
            v = F.normalize(image_proj(image_tower.embed(x)), dim=-1)
            same = torch.as_tensor((key[idx][:, None, :] == key[idx][None, :, :]).all(-1), dtype=torch.float32)
            targets = same / same.sum(1, keepdim=True)
            logits = scale.logit.exp().clamp(max=100) * t @ v.T
            loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T))
            if cfg.text_token_loss:
                token = token_loss(
                    out.last_hidden_state, modules["token_heads"], token_targets(ids, table, tokenizer.eos_token_id), sizes
                )
                token_losses.append(token.item())
                loss = loss + cfg.text_token_loss * token
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.text_steps:
                self._save_ckpt("text", step + 1, modules, opt)
                self.log(f"[text] step {step + 1}/{cfg.text_steps} loss {np.mean(losses[-cfg.checkpoint_every :]):.4f}")
        save_tensors(self.dir / "text-encoder.safetensors", text_encoder.state_dict())
        return {
            "final_loss": float(np.mean(losses[-100:])) if losses else None,
            "steps": cfg.text_steps,
            "logit_scale": float(scale.logit.detach().exp()),
            **(
                {"final_token_loss": float(np.mean(token_losses[-100:])) if token_losses else None} if cfg.text_token_loss else {}
            ),
        }

    def stage_unet(self, resume: bool) -> dict:
        cfg = self.cfg
        tokenizer = build_tokenizer()
        text_encoder, unet = build_text_encoder(tokenizer), build_unet()
        ema_te, ema_unet = build_text_encoder(tokenizer), build_unet()
        frozen_text = cfg.text_encoder == "contrastive"
        if frozen_text:  # the pre-trained encoder stays as it is, as SD keeps CLIP's
            text_encoder.load_state_dict(load_tensors(self.dir / "text-encoder.safetensors"))
            text_encoder.requires_grad_(False)
        ema_te.load_state_dict(text_encoder.state_dict())
        ema_unet.load_state_dict(unet.state_dict())
        for p in [*ema_te.parameters(), *ema_unet.parameters()]:
            p.requires_grad_(False)
        params = [*unet.parameters()] if frozen_text else [*text_encoder.parameters(), *unet.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
        modules = {"text_encoder": text_encoder, "unet": unet, "ema_text_encoder": ema_te, "ema_unet": ema_unet}
        start = self._load_ckpt("unet", modules, opt) if resume else 0

        lat = load_tensors(self.dir / "latents.safetensors")
        scaling = float(json.loads((self.dir / "latents.done").read_text())["scaling_factor"])
        _, labels = self._data()
        n = len(labels)
        sched = build_train_scheduler()
        weights = min_snr_weights(sched, cfg.min_snr_gamma)

        rng = np.random.default_rng(cfg.seed + 3 + start)
        gen = torch.Generator().manual_seed(cfg.seed + 3 + start)
        pad_gen = torch.Generator().manual_seed(cfg.seed + 5 + start)  # its own: the noise draws stay as with "prompt"
        cache: dict[str, list[int]] = {}

        def encode_ids(captions: list[str]) -> torch.Tensor:
            missing = [c for c in set(captions) if c not in cache]
            if missing:
                ids = tokenizer(missing, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
                cache.update(zip(missing, ids))
            return torch.tensor([cache[c] for c in captions])

        initial = [p.detach().clone() for p in params]
        text_encoder.train(not frozen_text)
        unet.train()
        losses: list[float] = []
        bar = tqdm(
            range(start, cfg.unet_steps),
            desc="unet",
            disable=not self.progress,
            mininterval=2,
            initial=start,
            total=cfg.unet_steps,
        )
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = cfg.unet_lr * _cosine(step, cfg.unet_steps, warmup=cfg.unet_warmup, floor=0.05)
            idx = rng.integers(0, n, cfg.unet_batch)
            captions = [world.caption_for(labels, int(i), rng) if rng.random() >= cfg.cfg_dropout else "" for i in idx]
            ids = encode_ids(captions)
            ti = torch.as_tensor(idx)
            z0 = (lat["mean"][ti] + lat["std"][ti] * torch.randn(lat["mean"][ti].shape, generator=gen)) * scaling
            noise = torch.randn(z0.shape, generator=gen)
            if cfg.noise_offset:
                # Offset noise: on a schedule whose terminal SNR is > 0 the model never sees the latent's
                # mean destroyed; a random per-channel offset teaches it to set the mean from the prompt.
                noise = noise + cfg.noise_offset * torch.randn(z0.shape[0], z0.shape[1], 1, 1, generator=gen)
            t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
            zt = sched.add_noise(z0, noise, t)
            with torch.set_grad_enabled(not frozen_text):
                cond = text_encoder(ids).last_hidden_state
            if cfg.padding == "shuffled":
                cond = shuffle_padding(cond, ids, tokenizer.eos_token_id, pad_gen)
            pred = unet(zt, t, cond).sample
            target = sched.get_velocity(z0, noise, t) if sched.config.prediction_type == "v_prediction" else noise
            per = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
            loss = (per * weights[t]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for src, dst in ((unet, ema_unet),) if frozen_text else ((text_encoder, ema_te), (unet, ema_unet)):
                    for p, q in zip(src.parameters(), dst.parameters()):
                        q.lerp_(p, 1 - decay)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.unet_steps:
                self._save_ckpt("unet", step + 1, modules, opt)
                self.log(f"[unet] step {step + 1}/{cfg.unet_steps} loss {np.mean(losses[-cfg.checkpoint_every :]):.4f}")
        change = float(sum((p.detach() - q).pow(2).sum() for p, q in zip(params, initial)).sqrt())
        return {
            "final_loss": float(np.mean(losses[-100:])) if losses else None,
            "steps": cfg.unet_steps,
            "param_change_l2": change,
        }

    def stage_export(self, out: Path | None = None) -> dict:
        """Write the StableDiffusionPipeline (EMA weights) and the classifier into ``out``."""
        pipe = assemble_pipeline(self.dir)
        out = Path(out or self.dir / "pipeline")
        out = check_dir_output(out, "pipeline", what="testbed pipeline directory")
        with atomic_path(out) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            save_tokenizer(pipe.tokenizer, tmp / "tokenizer")
            (tmp / "classifier.safetensors").write_bytes((self.dir / "classifier.safetensors").read_bytes())
            write_json(
                tmp / "testbed.json",
                {
                    "world": "erasekit-shapes-v1",
                    "sampling": RECOMMENDED_SAMPLING,
                    "train_config": asdict(self.cfg),
                    **({"excluded": list(self.cfg.exclude)} if self.cfg.exclude else {}),
                    # the model that still draws the excluded concepts (attacks take their targets from it)
                    **({"reference": self.cfg.codec_from} if self.cfg.exclude and self.cfg.codec_from else {}),
                },
            )
            write_manifest(tmp, "pipeline", files=True)
        return {"pipeline": shown_path(out)}

    # -- checkpoints -------------------------------------------------------------------------------
    def _save_ckpt(self, name: str, step: int, modules: dict, opt: torch.optim.Optimizer) -> None:
        save_checkpoint(self.dir, name, step, modules, opt)

    def _load_ckpt(self, name: str, modules: dict, opt: torch.optim.Optimizer) -> int:
        step = load_checkpoint(self.dir, name, modules, opt)
        if step:
            self.log(f"[{name}] resuming from step {step}")
        return step


def check_exclusions(concepts: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Canonical names of the concepts an oracle leaves out; a one-line error for anything the world lacks."""
    names: list[str] = []
    for c in concepts:
        name = world.canonical(c.strip().lower()) or c.strip().lower()
        try:
            world.domain_of(name)
        except KeyError:
            raise ConfigError(
                f"--exclude {c!r}: not a concept of the testbed world (a shape, style, colour or background, "
                f"a character ({', '.join(world.CHARACTERS)}) or watermark)"
            ) from None
        if name not in names:
            names.append(name)
    for domain in world.DOMAINS:
        if set(world.DOMAIN_VALUES[domain]) <= set(names):
            raise ConfigError(f"--exclude removes every {domain} of the world; keep at least one")
    return tuple(names)


def padding_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """``(B, L)`` bool: True at the positions after each row's first ``eos_id`` (its padding).

    A row without an end token (truncated) has no padding."""
    is_eos = ids == eos_id
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), ids.shape[1])
    return torch.arange(ids.shape[1]) > first[:, None]


#: The domains a caption's words name, with their label values (index order = the labels').
TOKEN_DOMAIN_VALUES: dict[str, tuple[str, ...]] = {**world.DOMAIN_VALUES, "character": tuple(world.CHARACTERS)}


def token_value_table(tokenizer) -> torch.Tensor:
    """``(V, D)`` long: for each token id, the label index its word names in each of the D domains of
    :data:`TOKEN_DOMAIN_VALUES` (a synonym names its canonical value), -1 where it names none."""
    domains = list(TOKEN_DOMAIN_VALUES)
    table = torch.full((len(tokenizer), len(domains)), -1, dtype=torch.long)
    for word in world.vocabulary():
        concept = world.canonical(word)
        if concept is None:
            continue
        domain = world.domain_of(concept)
        table[tokenizer.convert_tokens_to_ids(word + "</w>"), domains.index(domain)] = TOKEN_DOMAIN_VALUES[domain].index(concept)
    return table


def token_targets(ids: torch.Tensor, table: torch.Tensor, eos_id: int) -> torch.Tensor:
    """``(B, L, D)`` targets of the per-token loss: y[b, t, d] = the value of domain d named by the
    last word of d at a position ≤ t in row b, -1 where none has been named yet and in the padding
    (after the first end token; the end token itself keeps the caption's values). A causal encoder's
    state at t has read exactly the positions ≤ t, so every target is knowable there."""
    named = table[ids]  # (B, L, D)
    pos = torch.arange(ids.shape[1]).view(1, -1, 1).expand_as(named)
    last = torch.where(named >= 0, pos, -1).cummax(dim=1).values
    target = named.gather(1, last.clamp(min=0))
    target[last < 0] = -1
    target[padding_mask(ids, eos_id)] = -1
    return target


def token_loss(states: torch.Tensor, heads: torch.nn.Module, targets: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Mean cross-entropy of the linear probes ``heads`` (one block of ``sizes[d]`` outputs per
    domain) on ``states`` ``(B, L, W)`` over every (position, domain) with a target ≥ 0."""
    logits = heads(states).split(sizes, dim=-1)
    total, count = states.new_zeros(()), 0
    for d, block in enumerate(logits):
        keep = targets[..., d] >= 0
        if keep.any():
            total = total + F.cross_entropy(block[keep], targets[..., d][keep], reduction="sum")
            count += int(keep.sum())
    return total / max(count, 1)


def shuffle_padding(cond: torch.Tensor, ids: torch.Tensor, eos_id: int, gen: torch.Generator) -> torch.Tensor:
    """The encoder states ``cond`` ``(B, L, D)`` with each row's padding taken from another row.

    With a permutation π of the batch (a derangement for B > 1: a random cyclic shift of a random
    order), position ``j`` of row ``b`` becomes ``cond[π(b), j]`` wherever ``j`` lies after row
    ``b``'s first end token, and ``π(b)`` still has a state there (its padding or, for a shorter
    caption, its words); prompt tokens and the end token keep their own. The padding states then
    describe a random other caption: a UNet trained on them learns that they say nothing about the
    image, which is what a frozen CLIP's padding is to Stable Diffusion's UNet (Toker et al., *Padding
    Tone*, NAACL 2025)."""
    b = cond.shape[0]
    if b < 2:
        return cond
    order = torch.randperm(b, generator=gen)
    shift = int(torch.randint(1, b, (1,), generator=gen))
    perm = torch.empty_like(order)
    perm[order] = order.roll(-shift)
    mask = padding_mask(ids, eos_id).unsqueeze(-1)
    return torch.where(mask, cond[perm], cond)


def min_snr_weights(sched, gamma: float) -> torch.Tensor:
    """Per-timestep loss weights of Min-SNR-gamma (Hang et al., 2023), ``[num_train_timesteps]``.

    In x0 terms every step is weighted ``min(SNR(t), gamma)``. The epsilon loss equals ``SNR * ||x0
    error||^2``, hence weight ``min(SNR, gamma) / SNR``. For v targets we follow diffusers' training
    scripts and use ``min(SNR + 1, gamma) / (SNR + 1)`` (the v loss equals ``(SNR + 1) * ||x0 error||^2``),
    which keeps a weight of 1 in x0 terms at the pure-noise end of a zero-terminal-SNR schedule, where
    the layout is decided, instead of ~0.
    """
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    if sched.config.prediction_type == "v_prediction":
        snr = snr + 1
    return torch.clamp(snr, max=gamma) / snr


def _cosine(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """Linear warm-up to 1, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def assemble_pipeline(workdir: str | Path, ema: bool = True):
    """Build a StableDiffusionPipeline from a training work directory's latest checkpoints."""
    from diffusers import StableDiffusionPipeline

    from erasekit.testbeds.image.model import build_sample_scheduler

    workdir = Path(workdir)
    tokenizer = build_tokenizer()
    text_encoder, unet, vae = build_text_encoder(tokenizer), build_unet(), build_vae()
    tensors = load_tensors(workdir / "ckpt-unet.safetensors")
    prefix = "ema_" if ema else ""
    text_encoder.load_state_dict({k[len(prefix) + 13 :]: v for k, v in tensors.items() if k.startswith(prefix + "text_encoder.")})
    unet.load_state_dict({k[len(prefix) + 5 :]: v for k, v in tensors.items() if k.startswith(prefix + "unet.")})
    vae.load_state_dict(load_tensors(workdir / "ckpt-vae.safetensors"))
    scaling = float(json.loads((workdir / "latents.done").read_text())["scaling_factor"])
    vae.register_to_config(scaling_factor=scaling)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
