"""Transformer (MMDiT) families: SD3 and Flux.

Text enters through the linear maps that first project text-encoder outputs into the transformer,
as the UCE reference does for Flux: ``context_embedder`` (per-token features) and the pooled-text
projection ``time_text_embed.text_embedder.linear_1``. T5 is bidirectional, so prompts are encoded
by the pipeline's own ``encode_prompt`` with its padding: the features must match inference exactly.

- SD3: tokens = [CLIP-L ⊕ CLIP-G penultimate (padded to T5's width) ; T5] along the sequence;
  pooled = CLIP-L ⊕ CLIP-G pooled.
- Flux: tokens = T5; pooled = CLIP-L pooled.
"""

from __future__ import annotations

import torch
from torch import nn

from erasekit.core.errors import UnsupportedModelError
from erasekit.models.diffusion.base import Conditioning, Encoded, FamilyAdapter, Projection, Segment


class TransformerFamily(FamilyAdapter):
    denoiser = "transformer"
    objective = "flow"
    # The MMDiT analogues of the UNet sets: "xattn" = the joint attention of the dual-stream blocks,
    # "xattn-kv" = its text-stream key/value maps (what attn2.to_k/to_v are in a UNet).
    parameter_patterns = {
        "xattn": (r"^transformer\.transformer_blocks\.\d+\.attn\.", None),
        "xattn-kv": (r"^transformer\.transformer_blocks\.\d+\.attn\.add_[kv]_proj\.", None),
        "attn": (r"^transformer\..*\.attn\.", None),  # every attention block, single-stream ones included
        "noxattn": (
            r"^transformer\.",
            r"^transformer\.transformer_blocks\.\d+\.attn\.|^transformer\.(time_text_embed|norm_out|proj_out)\.",
        ),
        "full": (r"^transformer\.", None),
    }
    clip_tokenizer: str | None = None  # tokenizer of the CLIP segment at the start of the sequence, if any
    t5_tokenizer: str = ""

    def text_projections(self, pipe) -> list[Projection]:
        t = pipe.transformer
        return [
            Projection("transformer.context_embedder", t.context_embedder, "tokens"),
            Projection("transformer.time_text_embed.text_embedder.linear_1", t.time_text_embed.text_embedder.linear_1, "pooled"),
        ]

    def _encode_prompt(self, pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def trainable_components(self, pipe) -> list[str]:
        return [self.denoiser]  # text-encoder training goes through the pipeline's own encode_prompt: not supported

    def conditioning(
        self, pipe, prompts: list[str], modules: dict[str, nn.Module] | None = None, token_hook=None
    ) -> Conditioning:
        if modules or token_hook is not None:
            raise UnsupportedModelError(
                f"training or attacking the text encoders of {self.name} models is not supported; train the transformer"
            )
        tokens, pooled = self._encode_prompt(pipe, prompts)
        return Conditioning(tokens, {"pooled_projections": pooled})

    @torch.no_grad()
    def encode(self, pipe, prompts: list[str], batch_size: int = 64, upto: int | str | None = None) -> Encoded:
        tokens, pooled = [], []
        for i in range(0, len(prompts), batch_size):
            t, p = self._encode_prompt(pipe, prompts[i : i + batch_size])
            tokens.append(t.float())
            pooled.append(p.float())
        tokens_t = torch.cat(tokens)
        segments, counts = [], []
        start = 0
        if self.clip_tokenizer is not None:
            tok = getattr(pipe, self.clip_tokenizer)
            n = tok.model_max_length
            m = tok(prompts, padding="max_length", max_length=n, truncation=True, return_tensors="pt").attention_mask
            segments.append(Segment(0, n))
            counts.append(m.sum(1, keepdim=True))
            start = n
        t5_len = tokens_t.shape[1] - start
        segments.append(Segment(start, t5_len))
        tok5 = getattr(pipe, self.t5_tokenizer, None)
        if tok5 is not None:
            m = tok5(prompts, padding="max_length", max_length=t5_len, truncation=True, return_tensors="pt").attention_mask
            counts.append(m.sum(1, keepdim=True))
        else:  # SD3 without T5: the T5 segment is zeros
            counts.append(torch.ones(len(prompts), 1, dtype=torch.long))
        return Encoded(tokens=tokens_t, pooled=torch.cat(pooled), segments=segments, n_real=torch.cat(counts, dim=1))


class StableDiffusion3Family(TransformerFamily):
    name = "sd3"
    clip_tokenizer = "tokenizer"
    t5_tokenizer = "tokenizer_3"

    @classmethod
    def matches(cls, pipe) -> bool:
        return getattr(pipe, "transformer", None) is not None and hasattr(pipe, "text_encoder_3")

    def _encode_prompt(self, pipe, prompts):
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=pipe.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return embeds, pooled

    def predict(self, denoiser: nn.Module, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return denoiser(hidden_states=latents, timestep=t, encoder_hidden_states=cond.tokens, **cond.extra).sample


class FluxFamily(TransformerFamily):
    name = "flux"
    t5_tokenizer = "tokenizer_2"

    @classmethod
    def matches(cls, pipe) -> bool:
        t = getattr(pipe, "transformer", None)
        return t is not None and not hasattr(pipe, "text_encoder_3") and hasattr(t, "context_embedder")

    def _encode_prompt(self, pipe, prompts):
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=pipe.device, num_images_per_prompt=1)
        return embeds, pooled

    def latent_shape(self, pipe, n: int) -> tuple[int, ...]:
        """Unpacked latents ``[n, C, H, W]`` (Flux packs 2x2 patches into tokens inside :meth:`predict`)."""
        channels = pipe.transformer.config.in_channels // 4
        size = 2 * (pipe.default_sample_size // 2)
        return (n, channels, size, size)

    def predict(self, denoiser: nn.Module, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Pack ``[N, C, H, W]`` into 2x2-patch tokens, run Flux (timestep in [0, 1]), unpack the velocity."""
        n, c, h, w = latents.shape
        packed = latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)
        img_ids = torch.zeros(h // 2, w // 2, 3, device=latents.device, dtype=latents.dtype)
        img_ids[..., 1] += torch.arange(h // 2, device=latents.device)[:, None]
        img_ids[..., 2] += torch.arange(w // 2, device=latents.device)[None, :]
        txt_ids = torch.zeros(cond.tokens.shape[1], 3, device=latents.device, dtype=latents.dtype)
        guidance = torch.full((n,), 3.5, device=latents.device) if denoiser.config.guidance_embeds else None
        out = denoiser(
            hidden_states=packed, timestep=t / 1000, guidance=guidance, encoder_hidden_states=cond.tokens,
            txt_ids=txt_ids, img_ids=img_ids.reshape(-1, 3), **cond.extra,
        ).sample  # fmt: skip
        return out.view(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
