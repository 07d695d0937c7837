"""A few steps of every training stage: the pipeline it writes is a genuine, loadable diffusers pipeline."""

import json
import math

import torch
from diffusers import StableDiffusionPipeline
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.testbeds.image.train import TrainConfig, Trainer


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
