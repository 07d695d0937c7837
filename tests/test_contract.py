"""The contract every registered method keeps on every kind of model it claims, diffusion pipelines
and language models alike (one common tester, as peft tests every tuner; one call, ``api.erase``,
for both kinds): the input model is unchanged, the erasure is not empty, it survives a save/load
round trip, applying it changes exactly the tensors it records and removing it restores the model
bit for bit. A bfloat16 pass over every method catches dtype mixing on the CPU (the class of bug that
breaks half-precision checkpoints on GPUs)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from erasekit import api
from erasekit.core.erasure import Erasure
from erasekit.core.registry import all_methods
from erasekit.testing import LM_ARCHITECTURES, tiny_lm, tiny_params, tiny_pipeline

REQUEST = {"targets": [{"concept": "cat"}], "preserve": ["dog"]}
#: Every registered method on every kind it claims; a language-model method on each tiny architecture.
PAIRS = [
    (spec.name, f"{family}:{arch}" if family == "causal-lm" else family)
    for spec in all_methods()
    for family in spec.families
    for arch in (LM_ARCHITECTURES if family == "causal-lm" else (None,))
]


def tiny_model(kind: str, tmp_path):
    """The tiny model of ``kind`` (a diffusion family, or ``causal-lm:<arch>``) and the request for it."""
    if kind.startswith("causal-lm:"):
        return tiny_lm(kind.split(":")[1], directory=tmp_path / "lm"), "forget10"
    return tiny_pipeline(kind), REQUEST


def tiny_run(method: str, kind: str) -> dict:
    """Short-run parameters of ``method`` on ``kind`` (a language model: one epoch at a learning rate that moves it)."""
    if kind.startswith("causal-lm"):
        from erasekit.core.registry import get_method

        names = {name for name, *_ in get_method(method).parameters()}
        return {k: v for k, v in dict(epochs=1, batch_size=8, grad_accum=1, lr=1e-3).items() if k in names}
    return tiny_params(method, kind)


def model_state(pipe) -> dict[str, str]:
    """sha256 of every parameter of every component."""
    out = {}
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            for key, p in module.named_parameters():
                t = p.detach().contiguous()
                out[f"{name}.{key}"] = hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()
    return out


def test_every_default_config_validates():
    for spec in all_methods():
        spec.make_config({})


@pytest.mark.parametrize("method, family", PAIRS, ids=[f"{m}-{f}" for m, f in PAIRS])
def test_method_contract(method, family, tmp_path):
    pipe, request = tiny_model(family, tmp_path)
    before = model_state(pipe)
    erasure = api.erase(pipe, method, request, progress=False, **tiny_run(method, family))
    assert model_state(pipe) == before, "the input model was modified"
    assert erasure.weights or erasure.lora or erasure.attachment is not None, "empty erasure"
    assert erasure.family == family.split(":")[0]

    erasure.save(tmp_path / "e")
    loaded = Erasure.load(tmp_path / "e")
    assert loaded.metadata() == erasure.metadata()
    assert loaded.checksum() == erasure.checksum()
    for key, value in erasure.own_tensors().items():
        assert torch.equal(loaded.own_tensors()[key], value), key

    loaded.apply(pipe)
    applied = model_state(pipe)
    changed = {k for k in before if applied[k] != before[k]}
    assert changed == set(loaded.metadata()["changed_tensors"]), "the recorded changed tensors are not what apply changes"
    if loaded.attachment is None:
        assert changed, "applying the erasure changed nothing"
    loaded.remove(pipe)
    assert model_state(pipe) == before, "remove did not restore the model bit for bit"


@pytest.mark.parametrize("method", sorted({m for m, f in PAIRS if not f.startswith("causal-lm")}))
def test_every_method_runs_on_a_bfloat16_pipeline(method):
    """Half-precision models: the maths runs in float32/float64 and the result comes back in bfloat16.
    Trained methods get a learning rate whose two steps bfloat16 can hold: at their own rates the cast
    would round most of the update away, which erasekit refuses (``check_cast_keeps_update``)."""
    from erasekit.core.registry import get_method

    family = "sd"
    pipe = tiny_pipeline(family).to(dtype=torch.bfloat16)
    params = tiny_params(method, family)
    if "lr" in {name for name, *_ in get_method(method).parameters()}:
        params["lr"] = 1e-2
    erasure = api.erase(pipe, method, REQUEST, progress=False, **params)
    for key, value in erasure.weights.items():
        assert value.dtype == torch.bfloat16, key
        assert torch.isfinite(value.float()).all(), key
    before = model_state(pipe)
    erasure.apply(pipe)
    erasure.remove(pipe)
    assert model_state(pipe) == before


LORA_METHODS = {"esd": {}, "ablating": {}, "te-unlearn": {}, "advunlearn": {}, "ant": {"mask_ratio": 1.0}}


@pytest.mark.parametrize("method", sorted(LORA_METHODS))
def test_lora_erasures_keep_the_contract(method, tmp_path):
    """A LoRA erasure records the weights its factors change, and applies / removes exactly."""
    pipe = tiny_pipeline("sd")
    before = model_state(pipe)
    params = {k: v for k, v in tiny_params(method, "sd").items() if not k.startswith("mask_")}  # ant: no mask with a LoRA
    erasure = api.erase(pipe, method, REQUEST, progress=False, lora_rank=2, **params, **LORA_METHODS[method])
    assert erasure.lora and not erasure.weights
    erasure.save(tmp_path / "e")
    loaded = Erasure.load(tmp_path / "e")
    recorded = set(loaded.metadata()["changed_tensors"])
    assert recorded and recorded == set(erasure.touched())
    loaded.apply(pipe)
    changed = {k for k, v in model_state(pipe).items() if v != before[k]}
    assert changed <= recorded and changed, "the LoRA changed weights it does not record, or none"
    loaded.remove(pipe)
    assert model_state(pipe) == before
