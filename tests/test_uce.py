"""UCE on tiny random models of every family: its defining properties and the Erasure lifecycle."""

import pytest
import torch

from erasekit.api import erase
from erasekit.core.erasure import Erasure, get_tensor
from erasekit.core.errors import ConfigError, IncompatibleErasureError, UnsupportedModelError
from erasekit.core.request import ErasureRequest, Target
from erasekit.models.diffusion import get_adapter
from erasekit.testing import FAMILIES, tiny_pipeline

REQUEST = ErasureRequest([Target("star", anchor="a shape"), Target("heart")], preserve=["circle", "square", "cross"])


@pytest.fixture(scope="module", params=FAMILIES)
def family_pipe(request):
    pipe = tiny_pipeline(request.param)
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe


def _keys(pipe, prompts, reads):
    """Independent of the method: the pipeline's own encode_prompt, last word = index len(ids) - 2."""
    adapter = get_adapter(pipe)
    enc = adapter.encode(pipe, prompts)
    if reads == "pooled":
        return enc.pooled
    return enc.last_word_vectors()


def test_edit_maps_targets_to_anchors_and_keeps_preserved(family_pipe):
    family, pipe = family_pipe
    before = {p.weight_key: p.module.weight.detach().clone() for p in get_adapter(pipe).text_projections(pipe)}
    result = erase(pipe, "uce", REQUEST, lamb=1e-4)
    # the input pipeline is not modified
    for k, w in before.items():
        assert torch.equal(get_tensor(pipe, k), w)
    assert set(result.weights) == set(before)
    for proj in get_adapter(pipe).text_projections(pipe):
        w0, w1 = before[proj.weight_key].double(), result.weights[proj.weight_key].double()
        ce = _keys(pipe, ["star", "heart"], proj.reads).double()
        cg = _keys(pipe, ["a shape", ""], proj.reads).double()
        cp = _keys(pipe, ["circle", "square", "cross"], proj.reads).double()
        scale = (w0 @ cg.T).norm()
        assert (w1 @ ce.T - w0 @ cg.T).norm() / scale < 0.05, proj.path
        assert (w1 @ cp.T - w0 @ cp.T).norm() / (w0 @ cp.T).norm() < 0.05, proj.path
        assert (w1 - w0).norm() > 1e-4


def test_apply_remove_is_bit_exact_and_changes_outputs(family_pipe):
    family, pipe = family_pipe
    result = erase(pipe, "uce", REQUEST)
    before = {k: get_tensor(pipe, k).detach().clone() for k in result.weights}

    def image():
        return pipe(
            "a star", num_inference_steps=2, height=32, width=32, output_type="np", generator=torch.Generator().manual_seed(0)
        ).images

    base = image()
    result.apply(pipe)
    assert all(torch.equal(get_tensor(pipe, k), v) for k, v in result.weights.items())
    erased = image()
    assert abs(erased - base).max() > 1e-6
    with pytest.raises(IncompatibleErasureError, match="already applied"):
        result.apply(pipe)
    result.remove(pipe)
    assert all(torch.equal(get_tensor(pipe, k), v) for k, v in before.items())


def test_save_load_and_base_model_check(tmp_path, family_pipe):
    family, pipe = family_pipe
    result = erase(pipe, "uce", REQUEST, model=f"tiny-{family}")
    result.save(tmp_path / "e")
    loaded = Erasure.load(tmp_path / "e")
    assert loaded.method == "uce" and loaded.family == family and loaded.request == REQUEST
    assert loaded.params["lamb"] == 0.5 and loaded.base_model == f"tiny-{family}"
    fresh = tiny_pipeline(family)
    loaded.apply(fresh)
    assert all(torch.equal(get_tensor(fresh, k), v) for k, v in result.weights.items())
    other = tiny_pipeline(family, seed=1)
    with pytest.raises(IncompatibleErasureError, match="differ"):
        Erasure.load(tmp_path / "e").apply(other)
    Erasure.load(tmp_path / "e").apply(other, force=True)


def test_variant_2023_and_to_v_only():
    pipe = tiny_pipeline("sd")
    v_only = erase(pipe, "uce", REQUEST, with_to_k=False)
    assert v_only.weights and all(k.endswith("to_v.weight") for k in v_only.weights)
    paper = erase(pipe, "uce", REQUEST, variant="2023")
    # the 2023 code always preserves "" too: η_p = max(0.1, 1 / (|P| + 1)) with |P| = 3
    assert paper.info["token"] == "end" and paper.info["preserve_scale"] == pytest.approx(1 / 4)
    assert paper.info["target_keys"]["tokens"] > 2 * 2  # many end tokens per prompt
    # a preserved prompt keeps every position (the code's new_emb[:]): |plan.preserve| prompts x all tokens
    length = get_adapter(pipe).encode(pipe, ["circle"]).tokens.shape[1]
    preserved = paper.info["preserve_keys"]["tokens"]
    assert preserved % length == 0 and preserved // length >= 4
    without = erase(pipe, "uce", REQUEST, variant="2023", preserve_empty=False)
    assert (
        without.info["preserve_scale"] == pytest.approx(1 / 3) and without.info["preserve_keys"]["tokens"] == preserved - length
    )


def test_mass_erasure_uses_one_shared_solve():
    pipe = tiny_pipeline("sd")
    from erasekit.testbeds.image.world import COLOURS, SHAPES

    words = [f"{c} {s}" for c in COLOURS for s in SHAPES]  # 48 keys > d = 32: the direct d x d solve
    result = erase(pipe, "uce", ErasureRequest([Target(w) for w in words]))
    assert result.info["target_keys"]["tokens"] == len(words)
    assert result.info["solver"]["tokens"] == "direct"
    small = erase(pipe, "uce", ErasureRequest([Target("star")]))
    assert small.info["solver"]["tokens"] == "woodbury"


def test_bad_method_and_parameters_are_clear_errors():
    pipe = tiny_pipeline("sd")
    with pytest.raises(ConfigError, match="did you mean 'uce'"):
        erase(pipe, "ucee", REQUEST)
    with pytest.raises(ConfigError, match="no parameter"):
        erase(pipe, "uce", REQUEST, lambda_=1)
    with pytest.raises(ConfigError, match="must be float"):
        erase(pipe, "uce", REQUEST, lamb="abc")
    with pytest.raises(ConfigError, match="both erased and preserved"):
        ErasureRequest([Target("star")], preserve=["star"])


def test_unknown_family_is_a_clear_error():
    class NotAPipeline:
        pass

    with pytest.raises(UnsupportedModelError, match="not a supported model family"):
        get_adapter(NotAPipeline())


def test_request_from_yaml(tmp_path):
    path = tmp_path / "req.yaml"
    path.write_text(
        "targets:\n  - concept: star\n    anchor: a shape\n    synonyms: [pentagram]\n  - zorbo\npreserve: [circle]\ntemplates: ['a picture of {}']\n"
    )
    req = ErasureRequest.from_cli(["heart"], anchor="", preserve=["square"], request=str(path))
    assert req.concepts == ["star", "zorbo", "heart"]
    assert req.targets[0].synonyms == ["pentagram"] and req.targets[2].anchor == ""
    assert req.preserve == ["circle", "square"] and req.expand("x") == ["x", "a picture of x"]
    path.write_text("targets: [star]\nbogus: 1\n")
    with pytest.raises(ConfigError, match="unknown request fields: bogus"):
        ErasureRequest.from_yaml(path)
    path.write_text("targets: [star]\ntemplates: ['no slot']\n")
    with pytest.raises(ConfigError, match="exactly one"):
        ErasureRequest.from_yaml(path)


def test_implicit_targets_are_erased_through_their_trigger_prompts(tmp_path):
    from erasekit.core.request import Target

    t = Target("watermark", prompts=["on a white background"], synonyms=["white"])
    assert t.implicit and t.phrases() == ["on a white background", "white"]
    path = tmp_path / "req.yaml"
    path.write_text("targets:\n  - concept: logo\n    prompts: [on a white background]\n")
    assert ErasureRequest.from_yaml(path).targets[0].prompts == ["on a white background"]
    req = ErasureRequest.from_cli(["watermark", "star"], triggers=["white"])
    assert all(t.prompts == ["white"] for t in req.targets)
    filled = ErasureRequest(["watermark", "star"]).with_implicit({"watermark": ("on a white background",)})
    assert filled.targets[0].prompts == ["on a white background"] and not filled.targets[1].implicit
    with pytest.raises(ConfigError, match="trigger prompts"):
        ErasureRequest([Target("logo", prompts=[" "])])


@pytest.mark.testbed
def test_uce_equals_a_re_derivation_of_the_reference_update(testbed_pipe):
    """``trainscripts/uce_sd_erase.py`` written out: last-token keys (attention_mask.sum() − 2), the
    guide's values under the original weights, W' = (λW + η_e Σ v*cᵀ + η_p Σ v cᵀ)(λI + η_e Σ ccᵀ + η_p Σ ccᵀ)⁻¹,
    with its prompt expansion (the empty guide expanded too)."""
    pipe = testbed_pipe
    tok, te = pipe.tokenizer, pipe.text_encoder

    def key(prompt: str) -> torch.Tensor:
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        with torch.no_grad():
            h = te(ids.input_ids).last_hidden_state[0].double()
        return h[int(ids.attention_mask.sum()) - 2]

    templates = ["a picture of {}"]
    edits = ["star", *(t.format("star") for t in templates)]
    guides = ["", *(t.format("") for t in templates)]
    preserve = ["circle", "a picture of circle"]  # erasekit also expands preserved concepts (the script does not)
    lamb, eta_e, eta_p = 0.5, 1.0, 1.0
    request = ErasureRequest([Target("star")], preserve=["circle"], templates=templates)
    ours = erase(pipe, "uce", request)
    for name, module in pipe.unet.named_modules():
        if "attn2" in name and (name.endswith("to_k") or name.endswith("to_v")):
            w = module.weight.detach().double()
            mat1, mat2 = lamb * w, lamb * torch.eye(w.shape[1], dtype=torch.float64)
            for e, g in zip(edits, guides):
                c = key(e)[:, None]
                mat1 += eta_e * (w @ key(g)[:, None]) @ c.T
                mat2 += eta_e * c @ c.T
            for p in preserve:
                c = key(p)[:, None]
                mat1 += eta_p * (w @ c) @ c.T
                mat2 += eta_p * c @ c.T
            expected = mat1 @ torch.linalg.inv(mat2)
            got = ours.weights[f"unet.{name}.weight"].double()
            assert (got - expected).abs().max() <= 1e-4 * expected.abs().max(), name
