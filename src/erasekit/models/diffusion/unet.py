"""UNet families: Stable Diffusion 1.x/2.x (one CLIP) and SDXL (two CLIPs, penultimate layers concatenated).

Text enters the UNet only through the cross-attention key/value maps ``attn2.to_k`` / ``attn2.to_v``
(SD-1.x: 16 layers, 32 matrices). CLIP is causal, so the features at position ``i`` do not depend
on later tokens: ``encode(..., upto=k)`` runs the encoder on the first ``k`` positions only and
returns exactly what the full pipeline computes there (5-15x less work for last-word methods).
"""

from __future__ import annotations

import torch
from torch import nn

from erasekit.models.diffusion.base import Conditioning, Encoded, FamilyAdapter, Projection, Segment, find_linear

_TEXT_LAYERS = r"^text_encoder(_2)?\.(text_model\.)?(encoder\.layers|final_layer_norm)\."


def _clip_features(text_encoder, ids: torch.Tensor, hidden_layer: int | None) -> torch.Tensor:
    """CLIP token features: final (normed) output when ``hidden_layer`` is None, else that hidden state."""
    out = text_encoder(ids.to(text_encoder.device), output_hidden_states=hidden_layer is not None)
    return out.last_hidden_state if hidden_layer is None else out.hidden_states[hidden_layer]


class UNetFamily(FamilyAdapter):
    """Shared by SD and SDXL; subclasses say which encoders and layers make the token features."""

    denoiser = "unet"
    encoders: tuple[tuple[str, str, int | None], ...] = ()  # (tokenizer attr, encoder attr, hidden layer)
    # ESD's parameter sets in diffusers names: ESD-x = attn2, ESD-x-strict = attn2 to_k/to_v, ESD-u =
    # everything but attn2, the time (and SDXL's added) embeddings and the output layers.
    parameter_patterns = {
        "xattn": (r"^unet\..*\.attn2\.", None),
        "xattn-kv": (r"^unet\..*\.attn2\.to_[kv]\.", None),
        "attn": (r"^unet\..*\.attn[12]\.", None),  # self- and cross-attention (Ablating Concepts' attention group)
        "noxattn": (r"^unet\.", r"\.attn2\.|^unet\.(time_embedding|add_embedding|conv_norm_out|conv_out)\."),
        "full": (r"^unet\.", None),
        "text-encoder": (_TEXT_LAYERS, None),
    }

    def text_projections(self, pipe) -> list[Projection]:
        return find_linear(pipe.unet, "unet", ("attn2.to_k", "attn2.to_v"))

    @torch.no_grad()
    def encode(self, pipe, prompts: list[str], batch_size: int = 256, upto: int | str | None = None) -> Encoded:
        """Token features of ``prompts``; ``upto=k`` keeps the first ``k`` positions, ``upto="real"``
        keeps up to the longest prompt's EOS (identical values there: CLIP is causal)."""
        length = getattr(pipe, self.encoders[0][0]).model_max_length
        tokenized = []
        for tok_attr, _, _ in self.encoders:
            tok = getattr(pipe, tok_attr)
            tokenized.append(tok(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"))
        n_real = tokenized[0].attention_mask.sum(1, keepdim=True)
        if upto == "real":
            keep = int(n_real.max()) if len(prompts) else 1
        else:
            keep = length if upto is None else max(1, min(length, int(upto)))
        chunks, pooled = [], []
        for i in range(0, len(prompts), batch_size):
            feats = []
            for (_, enc_attr, layer), t in zip(self.encoders, tokenized):
                enc = getattr(pipe, enc_attr)
                ids = t.input_ids[i : i + batch_size]
                feats.append(_clip_features(enc, ids[:, :keep], layer))
                if self.pooled_from == enc_attr:
                    # Pooled text (SDXL's text_embeds) is read at the EOS position of the full sequence.
                    pooled.append(enc(ids.to(enc.device))[0])
            chunks.append(torch.cat(feats, dim=-1))
        return Encoded(
            tokens=torch.cat(chunks) if chunks else torch.zeros(0, keep, 0),
            pooled=torch.cat(pooled) if pooled else None,
            segments=[Segment(0, keep)],
            n_real=n_real.clamp(max=keep),
        )

    pooled_from: str | None = None

    def conditioning(
        self, pipe, prompts: list[str], modules: dict[str, nn.Module] | None = None, token_hook=None
    ) -> Conditioning:
        modules = modules or {}
        feats, pooled = [], None
        for k, (tok_attr, enc_attr, layer) in enumerate(self.encoders):
            tok = getattr(pipe, tok_attr)
            enc = modules.get(enc_attr, getattr(pipe, enc_attr))
            ids = tok(
                prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(enc.device)
            handle = None
            if token_hook is not None and k == 0:
                emb = enc.get_input_embeddings()
                handle = emb.register_forward_hook(lambda _m, _i, out: token_hook(out))
            try:
                out = enc(ids, output_hidden_states=layer is not None)
            finally:
                if handle is not None:
                    handle.remove()
            feats.append(out.last_hidden_state if layer is None else out.hidden_states[layer])
            if self.pooled_from == enc_attr:
                pooled = out[0]  # CLIPTextModelWithProjection: text_embeds, as the SDXL pipeline uses
        tokens = torch.cat(feats, dim=-1)
        extra = {}
        if pooled is not None:
            extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": self._time_ids(pipe, len(prompts)).to(tokens)}
        return Conditioning(tokens, extra)

    @torch.no_grad()
    def unconditional(self, pipe) -> Conditioning:
        """SDXL's pipeline (``force_zeros_for_empty_prompt``, on by default) samples its unconditional
        branch with zero token and pooled embeddings, not the encoding of ``""``; the others encode ``""``."""
        cond = self.conditioning(pipe, [""])
        if not (self.pooled_from and getattr(pipe.config, "force_zeros_for_empty_prompt", False)):
            return cond
        added = cond.extra["added_cond_kwargs"]
        zeros = {"text_embeds": torch.zeros_like(added["text_embeds"]), "time_ids": added["time_ids"]}
        return Conditioning(torch.zeros_like(cond.tokens), {"added_cond_kwargs": zeros})

    def _time_ids(self, pipe, n: int) -> torch.Tensor:
        """SDXL micro-conditioning at the default size: (original size, crop (0, 0), target size)."""
        size = self.image_size(pipe)
        return torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).expand(n, 6)

    def predict(self, denoiser: nn.Module, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return denoiser(latents, t, encoder_hidden_states=cond.tokens, **cond.extra).sample


class StableDiffusionFamily(UNetFamily):
    """SD 1.x / 2.x: ``prompt_embeds`` = the CLIP text encoder's final (layer-normed) output."""

    name = "sd"
    encoders = (("tokenizer", "text_encoder", None),)

    @classmethod
    def matches(cls, pipe) -> bool:
        return (
            hasattr(pipe, "unet")
            and getattr(pipe, "text_encoder_2", None) is None
            and getattr(pipe, "text_encoder", None) is not None
        )


class StableDiffusionXLFamily(UNetFamily):
    """SDXL: penultimate hidden states of CLIP-L (768) and OpenCLIP-G (1280) side by side (2048)."""

    name = "sdxl"
    encoders = (("tokenizer", "text_encoder", -2), ("tokenizer_2", "text_encoder_2", -2))
    pooled_from = "text_encoder_2"

    @classmethod
    def matches(cls, pipe) -> bool:
        return hasattr(pipe, "unet") and getattr(pipe, "text_encoder_2", None) is not None
