"""Architecture of the testbed's text-to-image model: a genuine diffusers StableDiffusionPipeline.

Sizes are chosen so the whole pipeline trains from scratch on a 2-core CPU in well under 90 minutes
and stays SD-1.x-shaped where erasure methods look:

- text encoder: ``CLIPTextModel`` (4 layers, width 128, 32 positions) over the world's tokenizer;
- VAE: ``AutoencoderKL`` with two downsamplings (32x32x3 images <-> 8x8x16 latents; 16 latent
  channels as SD3/Flux, which turns stripes and dots into per-pixel latent features);
- denoiser: ``UNet2DConditionModel`` with cross-attention (``attn2.to_k`` / ``attn2.to_v``) at 8x8,
  4x4 and in the mid block, epsilon prediction, as SD 1.x. Attention heads are 32 wide: on a CPU,
  narrow heads make attention dominate the step time.
- scheduler: DDIM with SD's scaled-linear betas.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from erasekit.testbeds.image.tokenizer import MODEL_MAX_LENGTH

TEXT_WIDTH = 128
LATENT_CHANNELS = 16
LATENT_SIZE = 8

#: Sampling settings the testbed is evaluated with (written to testbed.json; chosen on the quality gate).
RECOMMENDED_SAMPLING = {"steps": 20, "guidance_scale": 3.0}

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    # v-prediction on a zero-terminal-SNR schedule (Lin et al., 2024, "Common Diffusion Noise Schedules
    # and Sample Steps are Flawed"): the last training step is pure noise, so the model learns to set
    # the image's layout and mean brightness from the prompt alone, and the v target keeps that step
    # well posed (at SNR 0, v = -x0). With SD's epsilon target the layout is learnt with a weight of
    # SNR(t) ~ 0.005 in x0 terms at the steps that decide it, and shapes were learnt slowly.
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
)


def text_encoder_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="quick_gelu",
    )


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(text_encoder_config(tokenizer))


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        mid_block_add_attention=False,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=32,
        sample_size=32,
    )


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=(2, 4, 4),  # diffusers' legacy name: the number of heads per block
        norm_num_groups=32,
    )


def build_train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER_CONFIG)


def build_sample_scheduler() -> DDIMScheduler:
    # "trailing" spacing starts sampling at t = 999, the noise level the first step really faces.
    return DDIMScheduler(**SCHEDULER_CONFIG, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")
