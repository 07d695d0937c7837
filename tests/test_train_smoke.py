"""A few steps of every training stage: the pipeline it writes is a genuine, loadable diffusers pipeline."""

import json
import math

import pytest
import torch
from diffusers import StableDiffusionPipeline
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.core.errors import ConfigError
from erasekit.core.io import load_tensors
from erasekit.testbeds.image import world
from erasekit.testbeds.image.model import build_text_encoder
from erasekit.testbeds.image.tokenizer import build_tokenizer
from erasekit.testbeds.image.train import (
    STAGES,
    TOKEN_DOMAIN_VALUES,
    TrainConfig,
    Trainer,
    padding_mask,
    shuffle_padding,
    token_loss,
    token_targets,
    token_value_table,
)


def test_smoke_training_writes_a_loadable_pipeline_and_resumes(tmp_path):
    work = tmp_path / "work"
    result = CliRunner().invoke(app, ["testbed", "train", "--smoke", "--workdir", str(work)])
    assert result.exit_code == 0, result.output
    info = json.loads((work / "unet.done").read_text())
    assert math.isfinite(info["final_loss"])
    assert info["param_change_l2"] > 0  # the optimizer really moved the weights
    assert json.loads((work / "ckpt-unet.json").read_text())["step"] == TrainConfig.smoke().unet_steps

    pipe = StableDiffusionPipeline.from_pretrained(work / "pipeline", safety_checker=None)
    assert any(name.endswith("attn2.to_k") for name, _ in pipe.unet.named_modules())
    out = pipe(
        "a red star", num_inference_steps=2, guidance_scale=2.0, output_type="np", generator=torch.Generator().manual_seed(0)
    )
    assert out.images.shape == (1, 32, 32, 3)

    # Resume: drop the finished UNet/export stages and train further from the saved checkpoint.
    (work / "unet.done").unlink()
    (work / "export.done").unlink()
    cfg = TrainConfig.smoke()
    cfg.unet_steps += 3
    logs = []
    Trainer(work, cfg, progress=False, log=logs.append).run(resume=True)
    assert any("[classifier] already done" in line for line in logs)
    assert any(f"resuming from step {TrainConfig.smoke().unet_steps}" in line for line in logs)
    assert json.loads((work / "ckpt-unet.json").read_text())["step"] == cfg.unet_steps


@pytest.mark.testbed
def test_contrastive_text_encoder_is_pretrained_then_frozen(tmp_path):
    """text_encoder="contrastive": the text stage trains the encoder alone (CLIP-style), the UNet stage
    leaves it exactly as pre-trained (model and EMA copy), and the UNet still learns."""
    cfg = TrainConfig.smoke()
    cfg.text_encoder, cfg.codec_from = "contrastive", "testbed"
    Trainer(tmp_path, cfg, progress=False, log=lambda m: None).run(stages=STAGES[:-1])
    text = json.loads((tmp_path / "text.done").read_text())
    assert math.isfinite(text["final_loss"]) and text["steps"] == cfg.text_steps
    pre = load_tensors(tmp_path / "text-encoder.safetensors")
    fresh = build_text_encoder(build_tokenizer()).state_dict()
    assert any(not torch.equal(pre[k], fresh[k]) for k in pre)  # the pre-training moved the encoder
    ckpt = load_tensors(tmp_path / "ckpt-unet.safetensors")
    for prefix in ("text_encoder.", "ema_text_encoder."):
        for k, v in pre.items():
            assert torch.equal(ckpt[prefix + k], v), f"{prefix}{k} changed while the UNet trained"
    assert json.loads((tmp_path / "unet.done").read_text())["param_change_l2"] > 0


def test_unknown_text_encoder_training_is_refused():
    with pytest.raises(ConfigError, match="text_encoder must be one of joint, contrastive"):
        TrainConfig(text_encoder="frozen")
    result = CliRunner().invoke(app, ["testbed", "train", "--smoke", "--text-encoder", "frozen"])
    assert result.exit_code == 2 and "text_encoder must be one of" in result.output


def test_token_targets_name_what_was_said_at_or_before_each_position():
    """The per-token loss's targets: from a concept word on, its domain's value (a synonym names its
    canonical value; a later word of the same domain replaces it), -1 before it and in the padding."""
    tok = build_tokenizer()
    table = token_value_table(tok)
    character = next(iter(world.CHARACTERS))
    captions = ["a red stripy star on a black background", "an image of a box in dotted style", "a shape", character]
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    y = token_targets(ids, table, tok.eos_token_id)
    shape, style, colour, background, char = range(5)
    assert list(TOKEN_DOMAIN_VALUES)[char] == "character"
    v = world.value_index
    # <bos> a red stripy star on a black background <eos> <pad>...
    assert y[0, :11, shape].tolist() == [-1] * 4 + [v("shape", "star")] * 6 + [-1]
    assert y[0, :11, style].tolist() == [-1] * 3 + [v("style", "striped")] * 7 + [-1]
    assert y[0, :11, colour].tolist() == [-1] * 2 + [v("colour", "red")] * 8 + [-1]
    assert y[0, :11, background].tolist() == [-1] * 7 + [v("background", "black")] * 3 + [-1]
    assert y[1, :11, shape].tolist() == [-1] * 5 + [v("shape", "square")] * 5 + [-1]
    assert y[1, :11, style].tolist() == [-1] * 7 + [v("style", "dotted")] * 3 + [-1]
    assert (y[2] == -1).all()  # an anchor names nothing
    assert y[3, :4, char].tolist() == [-1, 0, 0, -1] and (y[3, :, :char] == -1).all()
    assert (y[:, tok.model_max_length - 1] == -1).all()
    again = tok(["a red star in striped style of a dotted shape"], return_tensors="pt").input_ids
    assert token_targets(again, table, tok.eos_token_id)[0, -1, style] == v("style", "dotted")  # the last word said wins
    heads = torch.nn.Linear(4, sum(len(x) for x in TOKEN_DOMAIN_VALUES.values()))
    states = torch.randn(ids.shape[0], ids.shape[1], 4, requires_grad=True)
    loss = token_loss(states, heads, y, [len(x) for x in TOKEN_DOMAIN_VALUES.values()])
    loss.backward()
    assert torch.isfinite(loss) and states.grad[2].abs().sum() == 0  # a row without targets gets no gradient


@pytest.mark.testbed
def test_the_token_loss_trains_the_encoders_word_states(tmp_path):
    """text_token_loss > 0: the text stage records its per-token loss, and the encoder it writes differs
    from the InfoNCE-only one trained from the same seed and data."""
    encoders = {}
    for weight in (0.0, 1.0):
        cfg = TrainConfig.smoke()
        cfg.text_encoder, cfg.codec_from, cfg.text_token_loss = "contrastive", "testbed", weight
        work = tmp_path / str(weight)
        Trainer(work, cfg, progress=False, log=lambda m: None).run(stages=STAGES[: STAGES.index("text") + 1])
        info = json.loads((work / "text.done").read_text())
        assert ("final_token_loss" in info) == bool(weight)
        encoders[weight] = load_tensors(work / "text-encoder.safetensors")
    assert math.isfinite(info["final_token_loss"])
    assert any(not torch.equal(encoders[0.0][k], encoders[1.0][k]) for k in encoders[0.0])


def test_the_token_loss_needs_a_pretrained_encoder():
    with pytest.raises(ConfigError, match="text_encoder='contrastive'"):
        TrainConfig(text_token_loss=1.0)
    with pytest.raises(ConfigError, match="weight >= 0"):
        TrainConfig(text_encoder="contrastive", text_token_loss=float("nan"))
    result = CliRunner().invoke(app, ["testbed", "train", "--smoke", "--token-loss", "1"])
    assert result.exit_code == 2 and "--token-loss trains a pre-trained text encoder" in result.output


def test_padding_mask_marks_the_positions_after_the_first_end_token():
    eos = 9
    ids = torch.tensor([[1, 4, 9, 9, 9], [1, 4, 5, 6, 9], [1, 4, 5, 6, 7]])
    assert padding_mask(ids, eos).tolist() == [
        [False, False, False, True, True],
        [False, False, False, False, False],
        [False, False, False, False, False],  # truncated: no end token, no padding
    ]


def test_shuffle_padding_gives_every_row_another_rows_padding_and_keeps_its_words():
    """padding="shuffled": after the end token each row holds a state of one other row (a derangement),
    the same other row at every padding position; words and the end token are the row's own."""
    eos, b, length = 9, 6, 7
    ids = torch.tensor([[1, 4, 5, 9, 9, 9, 9]] * 3 + [[1, 4, 9, 9, 9, 9, 9]] * 3)
    cond = torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, length, 2).clone()  # row b holds value b
    mask = padding_mask(ids, eos)
    for seed in range(20):
        out = shuffle_padding(cond, ids, eos, torch.Generator().manual_seed(seed))
        assert torch.equal(out[~mask], cond[~mask])
        sources = [set(out[r][mask[r]][:, 0].tolist()) for r in range(b)]
        assert all(len(s) == 1 for s in sources)
        picked = [int(next(iter(s))) for s in sources]
        assert sorted(picked) == list(range(b)) and all(p != r for r, p in enumerate(picked))
    single = cond[:1]
    assert torch.equal(shuffle_padding(single, ids[:1], eos, torch.Generator().manual_seed(0)), single)


@pytest.mark.testbed
def test_shuffled_padding_trains_and_changes_the_unet_update(tmp_path):
    """The option reaches the UNet stage: same data, seeds and noise draws (the shuffle has its own
    generator), so the UNets differ by the shuffled padding alone."""
    runs = {}
    for padding in ("prompt", "shuffled"):
        cfg = TrainConfig.smoke()
        cfg.codec_from, cfg.padding = "testbed", padding
        work = tmp_path / padding
        Trainer(work, cfg, progress=False, log=lambda m: None).run(stages=STAGES[:-1])
        runs[padding] = load_tensors(work / "ckpt-unet.safetensors")
    assert any(not torch.equal(runs["prompt"][k], runs["shuffled"][k]) for k in runs["prompt"] if k.startswith("unet."))


def test_unknown_padding_training_is_refused():
    with pytest.raises(ConfigError, match="padding must be one of prompt, shuffled"):
        TrainConfig(padding="masked")
    result = CliRunner().invoke(app, ["testbed", "train", "--smoke", "--padding", "masked"])
    assert result.exit_code == 2 and "padding must be one of" in result.output
