"""A device-mixing guard without a GPU: every method runs with the model on another device.

CUDA is unverified in CI, and the commonest CUDA bug is a tensor created on the CPU (``torch.zeros(n)``,
``torch.randn(shape, generator=gen)`` without ``.to(x)``) meeting the model's tensors. PyTorch raises
for that on any non-CPU device, and the ``meta`` device is one a CPU-only build has: it runs every op
on shapes alone, and a non-scalar CPU tensor meeting a meta tensor raises ``Tensor on device cpu is
not on the expected device meta!``, as CUDA does (0-dim CPU tensors are allowed, as on CUDA). So each
method runs here end to end with the model's components on ``meta``.

Why not fake CUDA tensors (``FakeTensorMode``, as the issue suggested): on this CPU-only torch the
indexing path of a fake ``cuda`` tensor takes a CUDA device guard and raises "PyTorch is not linked
with support for cuda devices" at the first slice (CLIP's ``position_ids[:, :seq_length]``), before
any method runs (tried in an earlier session; a Python-registered PrivateUse1 backend got past that
but not ``copy.deepcopy``, autocast or ``Module.to``).

What meta tensors cannot do, and the test therefore fakes: **reading device data on the host** —
``.item()``, ``int()``, ``float()``, ``bool()``, ``.tolist()``, ``.cpu()`` / ``.to("cpu")`` of a meta
tensor (a legitimate, synchronising read on CUDA). While a method runs, scalars read as 0 (``bool``:
``True``) and tensors copied to the host as ones, so value-dependent branches take one path
(Cholesky succeeds, losses are finite, sampled tokens come from a uniform distribution). Ops whose
output *shape* depends on the data (``torch.nonzero``, boolean-mask indexing: SPEED's k-means, UNDIAL's
token selection) run with torch's option to assume every element non-zero. A method whose own logic
then contradicts the placeholders is listed in ``DATA_DEPENDENT`` / ``LM_DATA_DEPENDENT`` with the read
that stops it and the error it raises; everything before that read still ran on the device.
"""

from __future__ import annotations

import pytest
import torch

from erasekit.core.registry import all_methods, get_method
from erasekit.core.request import ErasureRequest
from erasekit.models.diffusion import get_adapter
from erasekit.testing import tiny_params, tiny_pipeline

META = torch.device("meta")
#: image methods stopped by a read of device data whose placeholder contradicts their logic (none)
DATA_DEPENDENT: dict[str, str] = {}
FAMILIES = ("sd", "sdxl", "sd3", "flux")
CASES = [(m.name, f) for m in all_methods() if "causal-lm" not in m.families for f in FAMILIES if f in m.families]


@pytest.fixture
def host_reads(monkeypatch):
    """Reads of meta data into Python return zero placeholders (see the module docstring)."""
    real = {n: getattr(torch.Tensor, n) for n in ("item", "__int__", "__index__", "__float__", "__bool__", "tolist", "cpu", "to")}

    def placeholder(name, value):
        def read(self, *args, **kwargs):
            return value(self) if self.is_meta else real[name](self, *args, **kwargs)

        return read

    def to(self, *args, **kwargs):
        target = kwargs.get("device", next((a for a in args if isinstance(a, (str, torch.device))), None))
        if self.is_meta and target is not None and torch.device(target).type == "cpu":
            dtype = kwargs.get("dtype", next((a for a in args if isinstance(a, torch.dtype)), self.dtype))
            return torch.ones(self.shape, dtype=dtype)
        return real["to"](self, *args, **kwargs)

    ones = lambda t: torch.ones(t.shape, dtype=t.dtype)  # noqa: E731
    for name, value in (("item", lambda t: 0), ("__int__", lambda t: 0), ("__index__", lambda t: 0),
                        ("__float__", lambda t: 0.0), ("__bool__", lambda t: True), ("tolist", lambda t: ones(t).tolist()),
                        ("cpu", ones)):  # fmt: skip
        monkeypatch.setattr(torch.Tensor, name, placeholder(name, value))
    monkeypatch.setattr(torch.Tensor, "to", to)
    # torch.nonzero (boolean-mask indexing) has a data-dependent output shape; on meta it may assume
    # every element non-zero (SPEED's k-means, UNDIAL's token selection)
    import torch.fx.experimental._config as fx_config

    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        yield


def on_meta(family: str):
    """A tiny pipeline of ``family`` whose every component lives on the meta device."""
    pipe = tiny_pipeline(family)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            module.to(META)
    assert pipe.device == META
    return pipe


def run_method(name: str, family: str):
    """The method's registered function on a meta pipeline (the job's result packaging, which reads the
    tensors back for checksums, is left out)."""
    pipe = on_meta(family)
    spec = get_method(name)
    config = spec.make_config(tiny_params(name, family))
    request = ErasureRequest.from_dict({"targets": [{"concept": "cat"}], "preserve": ["dog"]})
    return spec.fn(pipe, request, config, adapter=get_adapter(pipe), progress=False)


@pytest.mark.parametrize("name, family", CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_every_method_runs_with_the_model_on_another_device(name, family, host_reads):
    if name in DATA_DEPENDENT:
        with pytest.raises(Exception, match=DATA_DEPENDENT[name]):
            run_method(name, family)
        return
    result = run_method(name, family)
    assert result.weights or result.lora or result.attachment is not None


def test_the_guard_catches_a_cpu_tensor_meeting_the_model(host_reads, monkeypatch):
    """The check can fail: noise drawn on the CPU and added to device latents (no ``.to(x0)``) raises."""
    from erasekit.training.diffusion import NoisedBatch, Workbench

    def careless(self, x0, t, gen):
        noise = torch.randn(x0.shape, generator=gen)  # the bug: left on the CPU
        return NoisedBatch(x0, noise, x0 + noise, t)

    monkeypatch.setattr(Workbench, "noised", careless)
    with pytest.raises(RuntimeError, match="is not on the expected device meta"):
        run_method("ablating", "sd")


LM_CASES = [m.name for m in all_methods() if "causal-lm" in m.families]
#: language-model methods stopped by a read of device data whose placeholder contradicts their logic:
#: LEACE tests ``u.norm() == 0`` (read as True: "nothing to erase"); ELM reads its sampled continuations'
#: lengths (``lengths.tolist()``, placeholders of 1 that disagree with the sampled shapes)
LM_DATA_DEPENDENT = {"leace": "same mean", "elm": "expanded size"}


@pytest.mark.parametrize("name", LM_CASES)
def test_every_language_model_method_runs_with_the_model_on_another_device(name, lm_dir, host_reads):
    import erasekit
    from erasekit.api.unlearning import forget_request

    lm = erasekit.load_lm(lm_dir)
    lm.model.to(META)
    spec = get_method(name)
    config = spec.make_config(tiny_params(name, "causal-lm"))
    request = forget_request(lm, "forget10")
    if name in LM_DATA_DEPENDENT:
        with pytest.raises(Exception, match=LM_DATA_DEPENDENT[name]):
            spec.fn(lm, request, config, adapter=None, progress=False)
        return
    result = spec.fn(lm, request, config, adapter=None, progress=False)
    assert result.weights or result.lora or result.attachment is not None
