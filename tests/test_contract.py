"""The contract every registered method keeps on every family it claims (one common tester, as peft
tests every tuner): the input pipeline is unchanged, the erasure is not empty, it survives a
save/load round trip, applying it changes exactly the tensors it records and removing it restores
the model bit for bit. A bfloat16 pass over every method catches dtype mixing on the CPU (the class of
bug that breaks half-precision checkpoints on GPUs)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from erasekit import api
from erasekit.core.erasure import Erasure
from erasekit.core.registry import all_methods
from erasekit.testing import tiny_params, tiny_pipeline

REQUEST = {"targets": [{"concept": "cat"}], "preserve": ["dog"]}
# diffusion families; the language-model methods ("causal-lm") keep the same contract in test_llm_methods.py
PAIRS = [(spec.name, family) for spec in all_methods() for family in spec.families if family != "causal-lm"]


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
    pipe = tiny_pipeline(family)
    before = model_state(pipe)
    erasure = api.erase(pipe, method, REQUEST, progress=False, **tiny_params(method, family))
    assert model_state(pipe) == before, "the input pipeline was modified"
    assert erasure.weights or erasure.lora or erasure.attachment is not None, "empty erasure"
    assert erasure.family == family

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


@pytest.mark.parametrize("method", sorted({m for m, _ in PAIRS}))
def test_every_method_runs_on_a_bfloat16_pipeline(method):
    """Half-precision models: the maths runs in float32/float64 and the result comes back in bfloat16."""
    family = "sd"
    pipe = tiny_pipeline(family).to(dtype=torch.bfloat16)
    erasure = api.erase(pipe, method, REQUEST, progress=False, **tiny_params(method, family))
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
    erasure = api.erase(pipe, method, REQUEST, progress=False, lora_rank=2, **tiny_params(method, "sd"), **LORA_METHODS[method])
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
