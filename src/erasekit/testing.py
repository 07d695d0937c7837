"""Tiny random pipelines of every supported family, built from configs (no downloads).

The configs mirror diffusers' own fast tests (``get_dummy_components``); their hub tokenizers and
T5 are replaced by tokenizers built here (the testbed's CLIP BPE, and a word-level T5). Used by the
test-suite and the benchmarks; the numbers they produce mean nothing about real models.
"""

from __future__ import annotations

import torch

from erasekit.testbeds.image.tokenizer import build_tokenizer
from erasekit.testbeds.image.world import vocabulary

FAMILIES = ("sd", "sdxl", "sd3", "flux")
EXTRA_WORDS = ("painting", "by", "art", "photo", "person", "cat", "dog", "car", "tree", "house", "van", "gogh", "monet")


#: The smallest budgets that still run every code path of a method (a method takes the names it has).
TINY_BUDGET = dict(iterations=2, ddim_steps=3, before_step=1, n_images=2, sample_steps=2, batch_size=1, mask_batches=1, warmup=1,
                   attack_steps=1, adv_warmup=1, adv_steps=1, adv_every=1, rank=2, epochs=1, mask_runs=1,
                   mask_iterations=1, anchor_batch=2, retain_batch=2, train_steps=2, positions_per_map=4, images=1,
                   steps=2)  # fmt: skip


def tiny_params(method: str, family: str) -> dict:
    """:data:`TINY_BUDGET` restricted to ``method``'s parameters (the tiny Flux also trains on 8x8 latents)."""
    from erasekit.core.registry import get_method

    names = {name for name, *_ in get_method(method).parameters()}
    params: dict = {k: v for k, v in TINY_BUDGET.items() if k in names}
    if "filter_judge" in names:  # a guard that judges images (the safety filter): zero-shot on a tiny CLIP
        params["filter_judge"] = f"clip:clip={_shared_tiny_clip()},labels=cat|dog|star|circle"
    if family == "flux" and "size" in names:
        params["size"] = 8
    return params


_TINY_CLIP: list = []


def _shared_tiny_clip():
    """One tiny CLIP directory per process (a temporary one), for methods that take a judge."""
    import tempfile
    from pathlib import Path

    if not _TINY_CLIP:
        _TINY_CLIP.append(tiny_clip_dir(Path(tempfile.mkdtemp(prefix="erasekit-tiny-clip-")) / "clip"))
    return _TINY_CLIP[0]


def tiny_clip_tokenizer():
    return build_tokenizer()


def tiny_t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    words = dict.fromkeys((*vocabulary(), *EXTRA_WORDS))
    pieces += [("\u2581" + w, -1.0 - i * 1e-3) for i, w in enumerate(words)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _clip(tok, hidden: int = 32, projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        hidden_size=hidden,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=3,
        vocab_size=len(tok),
        max_position_embeddings=tok.model_max_length,
        projection_dim=hidden,
        hidden_act="gelu",
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _t5(tok, width: int, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=width, d_kv=8, d_ff=37, num_layers=2, num_heads=4, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def _vae(**kw):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    base = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                latent_channels=4, norm_num_groups=2)  # fmt: skip
    base.update(kw)
    return AutoencoderKL(**base).eval()


def tiny_pipeline(family: str, seed: int = 0):
    """A random-weight pipeline of ``family`` (one of FAMILIES), small enough for unit tests on a CPU."""
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    clip_tok = tiny_clip_tokenizer()
    if family == "sd":
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                    cross_attention_dim=32, norm_num_groups=2)  # fmt: skip
        return StableDiffusionPipeline(vae=_vae(), text_encoder=_clip(clip_tok, seed=seed), tokenizer=clip_tok, unet=unet.eval(),
                                       scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    if family == "sdxl":
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(block_out_channels=(2, 4), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                    attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                                    addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                    projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=1)  # fmt: skip
        return StableDiffusionXLPipeline(vae=_vae(), text_encoder=_clip(clip_tok, seed=seed), text_encoder_2=_clip(clip_tok, projection=True, seed=seed + 1),
                                         tokenizer=clip_tok, tokenizer_2=clip_tok, unet=unet.eval(), scheduler=EulerDiscreteScheduler())  # fmt: skip
    t5_tok = tiny_t5_tokenizer()
    if family == "sd3":
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
                                            caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64, out_channels=4)  # fmt: skip
        vae = _vae(block_out_channels=(4,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), norm_num_groups=1,
                   use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)  # fmt: skip
        return StableDiffusion3Pipeline(transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                                        text_encoder=_clip(clip_tok, projection=True, seed=seed), tokenizer=clip_tok,
                                        text_encoder_2=_clip(clip_tok, projection=True, seed=seed + 1), tokenizer_2=clip_tok,
                                        text_encoder_3=_t5(t5_tok, 64, seed), tokenizer_3=t5_tok)  # fmt: skip
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])  # fmt: skip
    vae = _vae(block_out_channels=(4,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), latent_channels=1,
               norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)  # fmt: skip
    return FluxPipeline(transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                        text_encoder=_clip(clip_tok, seed=seed), tokenizer=clip_tok, text_encoder_2=_t5(t5_tok, 32, seed), tokenizer_2=t5_tok)  # fmt: skip


LM_ARCHITECTURES = ("gpt2", "llama")


def tiny_lm(arch: str = "gpt2", n_authors: int = 20, seed: int = 0, directory=None):
    """A tiny random causal LM (GPT-2 or Llama, built from a config) with the fact-world tokenizer of
    a ``n_authors`` world; with ``directory`` it is also saved there (with a fact-world
    ``testbed.json``, so forget splits resolve) and loaded back with :func:`~erasekit.models.causal_lm.load_lm`."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from erasekit.core.io import write_json
    from erasekit.models.causal_lm import LanguageModel, load_lm
    from erasekit.testbeds.facts.factworld import FactWorld, elm_defaults
    from erasekit.testbeds.facts.tokenizer import build_tokenizer as build_lm_tokenizer

    world = FactWorld(n_authors, seed=0)
    tok = build_lm_tokenizer(world)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=96, n_embd=32, n_layer=3, n_head=2, **ids))
    elif arch == "llama":
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96, **ids)  # fmt: skip
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose from {LM_ARCHITECTURES}")
    model.eval()
    if directory is None:
        return LanguageModel(model, tok, f"tiny-{arch}")
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    write_json(f"{directory}/testbed.json", {"world": "fact-world", "n_authors": n_authors, "seed": 0, "excluded": None,
                                             "unlearning_defaults": elm_defaults()})  # fmt: skip
    return load_lm(directory, device="cpu")


def tiny_clip_dir(directory, seed: int = 0):
    """A tiny random ``CLIPModel`` with its processor (the testbed's CLIP tokenizer, 32-pixel images),
    saved at ``directory`` (what a judge's ``clip=DIR`` reads); returns the directory."""
    from pathlib import Path

    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tok = tiny_clip_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)  # fmt: skip
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    directory = Path(directory)
    processor = CLIPProcessor(image_processor=_image_processor("clip"), tokenizer=tok)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def tiny_image_classifier_dir(directory, labels: list[str], seed: int = 0):
    """A tiny random ViT image classifier over ``labels`` with its processor, saved at ``directory``."""
    from pathlib import Path

    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, id2label=dict(enumerate(labels)),
                       label2id={n: i for i, n in enumerate(labels)})  # fmt: skip
    directory = Path(directory)
    ViTForImageClassification(config).save_pretrained(directory)
    _image_processor("vit").save_pretrained(directory)
    return directory


def _image_processor(kind: str):
    """A 32-pixel image processor that needs no torchvision (the PIL backend where transformers has one)."""
    import transformers

    if kind == "clip":
        cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        return cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return cls(size={"height": 32, "width": 32})
