"""Language-model unlearning methods on tiny random GPT-2 and Llama models (built from configs, no
downloads): the contract every method keeps (the input model is unchanged, the erasure saves, loads,
applies exactly what it records and is removed bit for bit), half precision, and each method's
defining property."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import erasekit
from erasekit.core.errors import ConfigError, ErasekitError, UnsupportedModelError
from erasekit.core.registry import all_methods
from erasekit.core.request import ForgetRequest, QAPair
from erasekit.evaluation.lm.metrics import answer_probability, greedy_answers
from erasekit.methods.lm.leace import block_states, decoder_blocks, fit_leace
from erasekit.methods.lm.npo import npo_loss
from erasekit.methods.lm.rmu import hidden_at, rmu_layer
from erasekit.models.lm_batches import encode_pairs
from erasekit.testing import LM_ARCHITECTURES, tiny_lm
from erasekit.training.lm import UnlearnConfig, answer_logprob, fit, nll, select_parameters

LM_METHODS = sorted(s.name for s in all_methods() if "causal-lm" in s.families)
FAST = dict(epochs=1, batch_size=8, grad_accum=1)


def fast(method: str, **extra) -> dict:
    """FAST and ``extra`` restricted to ``method``'s parameters (guards and closed forms do not train)."""
    from erasekit.core.registry import get_method

    names = {name for name, *_ in get_method(method).parameters()}
    return {k: v for k, v in {**FAST, **extra}.items() if k in names}


def state(lm) -> dict[str, str]:
    return {k: hashlib.sha256(p.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for k, p in lm.model.named_parameters()}  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {arch: tiny_lm(arch, directory=tmp_path_factory.mktemp(arch) / "m") for arch in LM_ARCHITECTURES}


def test_the_method_families_of_the_issue_are_registered():
    assert {"ga", "graddiff", "npo", "simnpo", "idk-dpo", "rmu", "elm", "task-vector", "leace", "refusal-guard", "undial"} <= set(
        LM_METHODS
    )


# The contract every method keeps (input unchanged, save/load, apply/remove bit for bit) is tested for
# the language-model methods together with the image methods, in test_contract.py.


@pytest.mark.parametrize("method", LM_METHODS)
def test_every_method_runs_on_a_bfloat16_model(models, method):
    lm = tiny_lm("llama")
    lm.model.to(torch.bfloat16)
    request = ForgetRequest("pairs", [QAPair("Where was Ala Brakow born?", "Ala Brakow was born in Aldmoor.")] * 4,
                            [QAPair("Who publishes Ala Brakow?", "Ala Brakow is published by Cobalt Books.")] * 4)  # fmt: skip
    erasure = erasekit.unlearn(lm, method, request, progress=False, **fast(method, lr=1e-2))
    assert all(v.dtype == torch.bfloat16 and torch.isfinite(v.float()).all() for v in erasure.weights.values())
    with erasure.applied(lm):
        logits = lm.model(input_ids=encode_pairs(lm.tokenizer, request.forget, lm.device)["input_ids"]).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def _logp(lm, pairs):
    with torch.no_grad():
        return answer_logprob(lm.model, encode_pairs(lm.tokenizer, pairs, lm.device), mean=True)


def test_gradient_ascent_lowers_the_forget_answers_more_than_the_retain_answers(models):
    lm = models["gpt2"]
    request = erasekit.forget_request(lm, "forget10")
    retain = request.retain[:40]
    f0, r0 = _logp(lm, request.forget).mean(), _logp(lm, retain).mean()
    with erasekit.unlearn(lm, "ga", request, progress=False, lr=3e-3, epochs=6).applied(lm):
        f1, r1 = _logp(lm, request.forget).mean(), _logp(lm, retain).mean()
    assert f1 < f0 - 0.5 and (f0 - f1) > (r0 - r1)


def test_npo_gradient_at_the_reference_is_the_gradient_of_the_log_likelihood(models):
    """d/dθ −(2/β) log σ(−β(log π_θ − log π_ref)) = 2 σ(βΔ) ∇ log π_θ, which is ∇ mean log π_θ at Δ = 0."""
    lm = models["gpt2"]
    model = lm.model
    batch = encode_pairs(lm.tokenizer, erasekit.forget_request(lm, "forget10").forget[:4], lm.device)
    w = model.transformer.h[0].mlp.c_fc.weight
    g_npo = torch.autograd.grad(npo_loss(model, model, batch, beta=0.1), w)[0]
    g_ll = torch.autograd.grad(answer_logprob(model, batch).mean(), w)[0]
    assert torch.allclose(g_npo, g_ll, atol=1e-6, rtol=1e-4)
    assert npo_loss(model, model, batch, beta=0.1).item() == pytest.approx(
        2 / 0.1 * torch.log(torch.tensor(2.0)).item(), rel=1e-5
    )


def test_idk_dpo_moves_probability_from_the_answer_to_the_refusal(models):
    lm = models["gpt2"]
    request = erasekit.forget_request(lm, "forget10")
    refusals = [QAPair(p.question, request.refusal) for p in request.forget]
    a0, i0 = _logp(lm, request.forget).mean(), _logp(lm, refusals).mean()
    one = (request.refusal,)  # one refusal, so that its probability can be measured
    with erasekit.unlearn(lm, "idk-dpo", request, progress=False, lr=3e-3, epochs=3, refusals=one).applied(lm):
        a1, i1 = _logp(lm, request.forget).mean(), _logp(lm, refusals).mean()
    assert i1 > i0 + 0.5 and a1 < a0


def test_idk_dpo_draws_a_refusal_per_pair_and_step_from_its_list():
    """As open-unlearning's IDK dataset: each forget pair's preferred answer is drawn from the list, anew
    at each step, the same in a rerun; the fact-world testbed recommends its in-vocabulary refusals."""
    from erasekit.api.unlearning import recommended_params
    from erasekit.methods.lm.idk import IDK_ANSWERS, IDKConfig, draw_refusals
    from erasekit.testbeds.facts.factworld import REFUSALS

    questions = [f"Where was author {i} born?" for i in range(40)]
    first = draw_refusals(IDK_ANSWERS, questions, seed=0, step=0)
    assert first == draw_refusals(IDK_ANSWERS, questions, seed=0, step=0)  # reproducible (resume)
    assert first != draw_refusals(IDK_ANSWERS, questions, seed=0, step=1) and len(set(first)) >= 5
    assert set(first) <= set(IDK_ANSWERS) and IDKConfig().refusals == IDK_ANSWERS
    assert recommended_params(erasekit.load_lm("testbed-llm"), IDKConfig)["refusals"] == list(REFUSALS)
    with pytest.raises(ConfigError, match="refusals"):
        IDKConfig(refusals=())


def test_simnpo_margin_sits_inside_beta(models, monkeypatch):
    """``−(2/β) log σ(β (NLL̄ − δ))`` as the authors' code and open-unlearning (not ``β NLL̄ − δ``), by
    hand on the loss the method hands to the loop, at δ = 0.5."""
    import erasekit.methods.lm.simnpo as simnpo_module
    from erasekit.training.lm import Step

    captured = {}

    def capture(lm, request, config, loss_fn, *args, **kwargs):
        captured["loss"] = loss_fn
        raise RuntimeError("captured")

    monkeypatch.setattr(simnpo_module, "fit", capture)
    lm = models["gpt2"]
    pairs = erasekit.forget_request(lm, "forget10").forget[:4]
    batch = encode_pairs(lm.tokenizer, pairs, lm.device)
    with torch.no_grad():
        mean_nll = -answer_logprob(lm.model, batch, mean=True)
    delta = float(mean_nll.mean())  # a margin where the sigmoid is not saturated
    with pytest.raises(RuntimeError, match="captured"):
        erasekit.unlearn(lm, "simnpo", "forget10", progress=False, delta=delta, beta=4.5, alpha=0.0, gamma=1.0)
    with torch.no_grad():
        loss, _ = captured["loss"](Step(batch, None, lm.model, lm.model, 0, pairs))
    expected = -(2 / 4.5) * torch.nn.functional.logsigmoid(4.5 * (mean_nll - delta)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    outside = -(2 / 4.5) * torch.nn.functional.logsigmoid(4.5 * mean_nll - delta).mean()
    assert abs(loss.item() - outside.item()) > 1e-3


def test_rmu_trains_only_the_mlp_output_projections_and_steers_the_forget_activations(models):
    lm = models["llama"]
    request = erasekit.forget_request(lm, "forget10")
    erasure = erasekit.unlearn(lm, "rmu", request, progress=False, lr=3e-2, epochs=5, steering_coeff=1.0, alpha=1.0)
    layer = rmu_layer(lm.model, -1)
    assert set(erasure.weights) == {f"model.model.layers.{i}.mlp.down_proj.weight" for i in range(max(0, layer - 2), layer + 1)}
    batch = encode_pairs(lm.tokenizer, request.forget, lm.device)
    with torch.no_grad():
        h0 = hidden_at(lm.model, batch, layer)
        with erasure.applied(lm):
            h1 = hidden_at(lm.model, batch, layer)
    u = torch.rand(h0.shape[-1], generator=torch.Generator().manual_seed(0))  # the method's direction (seed 0), norm 1
    control = u / u.norm()
    mask = batch["attention_mask"].bool()
    before, after = ((h0 - control) ** 2).mean(-1)[mask].mean(), ((h1 - control) ** 2).mean(-1)[mask].mean()
    assert after < 0.5 * before  # the forget activations moved to the steering target


def test_adaptive_rmu_scales_its_target_with_the_forget_activations(models):
    """c = β · mean per-token norm of the frozen model's block-ℓ output on the forget text."""
    lm = models["gpt2"]
    request = erasekit.forget_request(lm, "forget10")
    layer = rmu_layer(lm.model, -1)
    batch = encode_pairs(lm.tokenizer, request.forget, lm.device)
    with torch.no_grad():
        norm = hidden_at(lm.model, batch, layer).norm(dim=-1)[batch["attention_mask"].bool()].mean().item()
    erasure = erasekit.unlearn(lm, "rmu", request, progress=False, epochs=1, adaptive_scale=5.0, alpha=1.0)
    assert erasure.info["steering_coeff"] == pytest.approx(5 * norm, rel=1e-4)
    fixed = erasekit.unlearn(lm, "rmu", request, progress=False, epochs=1, steering_coeff=3.0)
    assert fixed.info["steering_coeff"] == 3.0


def test_task_vector_is_linear_in_its_scale(models):
    lm = models["gpt2"]
    one = erasekit.unlearn(lm, "task-vector", "forget10", progress=False, lr=1e-3, scale=1.0, **FAST)
    two = erasekit.unlearn(lm, "task-vector", "forget10", progress=False, lr=1e-3, scale=2.0, **FAST)
    params = dict(lm.model.named_parameters())
    for key, v1 in one.weights.items():
        theta = params[key[len("model.") :]].detach()
        assert torch.allclose(two.weights[key] - theta, 2 * (v1 - theta), atol=1e-5)


def test_parameter_sets_select_what_trains(models):
    lm = models["gpt2"]
    erasure = erasekit.unlearn(lm, "graddiff", "forget10", progress=False, lr=1e-3, params="mlp", **FAST)
    assert erasure.weights and all(".mlp." in k for k in erasure.weights)
    with pytest.raises(ConfigError, match="selects no parameter"):
        select_parameters(lm.model, "re:nothing-matches")
    with pytest.raises(ConfigError, match="params="):
        erasekit.unlearn(lm, "ga", "forget10", progress=False, params="everything")


def test_a_loss_without_gradient_is_refused(models):
    lm = models["gpt2"]
    request = erasekit.forget_request(lm, "forget10")

    def frozen(step):
        with torch.no_grad():
            return nll(step.model, step.forget), {}

    with pytest.raises(ErasekitError, match="does not depend on the trained parameters"):
        fit(lm, request, UnlearnConfig(epochs=1), frozen, progress=False)


def test_retain_terms_need_retain_pairs_and_image_methods_are_refused(models):
    lm = models["gpt2"]
    request = ForgetRequest("x", [QAPair("Where was Ala Brakow born?", "Ala Brakow was born in Aldmoor.")])
    with pytest.raises(ConfigError, match="retain pairs"):
        erasekit.unlearn(lm, "graddiff", request, progress=False)
    with pytest.raises(UnsupportedModelError, match="for language models use one of"):
        erasekit.unlearn(lm, "uce", request, progress=False)


def test_forget_requests_from_splits_and_files(models, tmp_path):
    lm = models["gpt2"]
    req = erasekit.forget_request(lm, "forget10")  # 20 authors -> 2 forgotten, 20 questions each
    assert (
        len(req.forget) == 40
        and len(req.retain) == 18 * 20
        and not {p.question for p in req.forget} & {p.question for p in req.retain}
    )
    pairs = [{"question": "Who?", "answer": "Me.", "paraphrased_answer": "ignored"}]
    (tmp_path / "f.json").write_text(json.dumps(pairs))
    (tmp_path / "f.jsonl").write_text("\n".join(json.dumps(p) for p in [*pairs, {"question": "Who else?", "answer": "You."}]))
    (tmp_path / "f.csv").write_text("question,answer\nWho?,Me.\n")
    for name, n in (("f.json", 1), ("f.jsonl", 2), ("f.csv", 1)):
        req = erasekit.forget_request(lm, str(tmp_path / name))
        assert len(req.forget) == n and req.forget[0] == QAPair("Who?", "Me.") and req.name == "f"
    (tmp_path / "bad.json").write_text(json.dumps([{"q": "x"}]))
    with pytest.raises(ConfigError, match="entry 1 needs text fields"):
        erasekit.forget_request(lm, str(tmp_path / "bad.json"))
    with pytest.raises(ConfigError, match="splits belong to the fact-world testbed"):
        erasekit.forget_request(tiny_lm("gpt2"), "forget01")


def test_forget_requests_from_a_saved_dataset_directory(models, tmp_path):
    """TOFU from the hub, saved with datasets' save_to_disk, is read offline (Dataset or a DatasetDict of one split)."""
    from datasets import Dataset, DatasetDict

    rows = {"question": ["Who wrote it?", "Where?"], "answer": ["Ala did.", "Aldmoor."], "paraphrased_answer": ["x", "y"]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "tofu"))
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "dict"))
    DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "two"))
    for name in ("tofu", "dict"):
        req = erasekit.forget_request(models["gpt2"], str(tmp_path / name))
        assert [(p.question, p.answer) for p in req.forget] == [("Who wrote it?", "Ala did."), ("Where?", "Aldmoor.")]
    with pytest.raises(ConfigError, match="holds the splits train, test; pass one of them"):
        erasekit.forget_request(models["gpt2"], str(tmp_path / "two"))
    assert len(erasekit.forget_request(models["gpt2"], str(tmp_path / "two" / "test")).forget) == 2
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="is not a saved dataset"):
        erasekit.forget_request(models["gpt2"], str(tmp_path / "plain"))


def test_refusal_guard_refuses_exactly_the_questions_that_name_a_forgotten_author(models):
    lm = models["gpt2"]
    request = erasekit.forget_request(lm, "forget10")
    erasure = erasekit.unlearn(lm, "refusal-guard", request, progress=False)
    names = {p.question.split(" ")[-2] for p in request.forget}  # "... Ala Brakow?" -> last name (the trigger is one name word)
    assert erasure.info["triggers"] and not erasure.weights
    forget_q, retain_q = [p.question for p in request.forget[:4]], [p.question for p in request.retain[:4]]
    plain = greedy_answers(lm.model, lm.tokenizer, retain_q)
    with erasure.applied(lm):
        assert greedy_answers(lm.model, lm.tokenizer, forget_q) == [request.refusal] * 4  # through generate's KV cache
        assert greedy_answers(lm.model, lm.tokenizer, retain_q) == plain
        p_true = answer_probability(lm.model, lm.tokenizer, forget_q, [p.answer for p in request.forget[:4]])
        p_refusal = answer_probability(lm.model, lm.tokenizer, forget_q, [request.refusal] * 4)
    assert (p_true < 1e-6).all() and (p_refusal > 0.99).all() and names


def test_leace_leaves_no_linear_difference_between_forget_and_retain_states(models):
    lm = models["llama"]
    request = erasekit.forget_request(lm, "forget10")
    x = torch.randn(200, 8, dtype=torch.float64)
    z = (torch.arange(200) < 50).double()
    x[:50] += 3.0  # a concept in the mean
    eraser = fit_leace(x.float(), z)
    from erasekit.methods.lm.leace import erase_states

    erased = erase_states(x.float(), eraser)
    assert (erased[:50].mean(0) - erased[50:].mean(0)).abs().max() < 1e-4  # LEACE's guarantee: equal class means
    assert (x[:50].mean(0) - x[50:].mean(0)).abs().max() > 2.9
    erasure = erasekit.unlearn(lm, "leace", request, progress=False, layers="1", max_retain=10_000)  # fitted on all of them
    path = decoder_blocks(lm.model)[1]
    with erasure.applied(lm):
        xf, xr = block_states(lm, request.forget, path, 64), block_states(lm, request.retain, path, 64)
    before = block_states(lm, request.forget, path, 64).mean(0) - block_states(lm, request.retain, path, 64).mean(0)
    assert (xf.mean(0) - xr.mean(0)).norm() < 1e-3 * before.norm()


def test_undial_targets_lower_only_the_true_token_and_the_loss_is_minimal_at_the_target(models):
    from erasekit.methods.lm.undial import undial_loss, undial_targets

    z = torch.tensor([[2.0, 1.0, 0.0]])
    q = undial_targets(z, torch.tensor([0]), beta=10.0)
    assert torch.allclose(q, torch.softmax(torch.tensor([[-8.0, 1.0, 0.0]]), -1))  # only the label's logit moves
    lm = models["gpt2"]
    batch = encode_pairs(lm.tokenizer, erasekit.forget_request(lm, "forget10").forget[:4], lm.device)
    at_zero = undial_loss(lm.model, lm.model, batch, beta=0.0, positions="answer")  # β = 0: the target is the model
    labels = batch["labels"][:, 1:]
    logits = lm.model(input_ids=batch["input_ids"]).logits[:, :-1][labels != -100]
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
    assert at_zero.item() == pytest.approx(entropy.item(), rel=1e-5)  # CE(p, p) = H(p)
    w = lm.model.transformer.h[0].mlp.c_fc.weight
    assert torch.autograd.grad(at_zero, w)[0].abs().max() < 1e-6  # the target is the model: nothing to learn
    g = torch.autograd.grad(undial_loss(lm.model, lm.model, batch, beta=10.0, positions="answer"), w)[0]
    g_ll = torch.autograd.grad(answer_logprob(lm.model, batch).sum(), w)[0]
    assert (g * g_ll).sum() > 0  # descending the UNDIAL loss lowers the answers' log-likelihood


def test_undial_default_averages_over_every_token_as_the_authors_code(models):
    """The authors' ``DITrainer.compute_loss`` (dong-river/LLM_unlearning ``utils/ft_utils.py``): the
    target ``softmax(z_ref − β·onehot(next token))`` at every shifted position, the soft cross-entropy
    averaged over them (here over the real ones: padding left out)."""
    from erasekit.methods.lm.undial import undial_loss

    lm = models["gpt2"]
    batch = encode_pairs(lm.tokenizer, erasekit.forget_request(lm, "forget10").forget[:4], lm.device)
    student = tiny_lm("gpt2", seed=1).model  # a different model, so that the loss is not its own entropy
    with torch.no_grad():
        ids, real = batch["input_ids"], batch["attention_mask"][:, 1:].bool()
        shift_labels, logits = ids[..., 1:], student(input_ids=ids, attention_mask=batch["attention_mask"]).logits[..., :-1, :]
        teacher = lm.model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[..., :-1, :]
        mask = torch.zeros_like(teacher)
        mask[
            torch.arange(mask.shape[0]).view(-1, 1, 1), torch.arange(mask.shape[1]).view(1, -1, 1), shift_labels.unsqueeze(-1)
        ] = 1
        soft = torch.softmax(teacher - mask * 10.0, dim=-1)
        per = torch.nn.CrossEntropyLoss(reduction="none")(logits.reshape(-1, logits.shape[-1]), soft.reshape(-1, soft.shape[-1]))
        reference = per.view(real.shape)[real].mean()
        ours = undial_loss(student, lm.model, batch, beta=10.0)
        answer_only = undial_loss(student, lm.model, batch, beta=10.0, positions="answer")
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    answers = (batch["labels"][:, 1:] != -100).sum()
    assert real.sum() > answers and answer_only.item() != ours.item()  # the question tokens count too


def test_kl_retain_term_averages_over_every_real_position_by_default(models):
    """open-unlearning's ``compute_kl_divergence``: ``kl_div(log p_θ, log p_ref, batchmean, log_target)``
    over the flattened positions, i.e. the mean ``KL(p_ref ‖ p_θ)`` per position (padding left out here)."""
    from erasekit.training.lm import kl_to_reference

    lm = models["gpt2"]
    batch = encode_pairs(lm.tokenizer, erasekit.forget_request(lm, "forget10").retain[:4], lm.device)
    student = tiny_lm("gpt2", seed=1).model
    with torch.no_grad():
        real = batch["attention_mask"][:, 1:].bool()
        cur = torch.log_softmax(student(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits[:, :-1][real], -1)
        ref = torch.log_softmax(lm.model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits[:, :-1][real], -1)
        reference = torch.nn.functional.kl_div(cur, ref, reduction="batchmean", log_target=True)
        assert kl_to_reference(student, lm.model, batch).item() == pytest.approx(reference.item(), rel=1e-5)
        assert kl_to_reference(student, lm.model, batch, "answer").item() != pytest.approx(reference.item(), rel=1e-3)
    with pytest.raises(ConfigError, match="applies to retain_loss=KL only"):
        erasekit.unlearn(lm, "graddiff", "forget10", progress=False, kl_positions="answer")  # NLL retain: refused, not ignored


def test_unlearning_runs_in_the_one_loop_and_resumes_exactly(models, tmp_path, monkeypatch):
    """A language-model run checkpoints and resumes like a pipeline's: the interrupted-and-resumed
    run gives bit-identical weights, and another run's checkpoint is refused."""
    from erasekit.training import lm as unlearn_mod

    lm = models["gpt2"]
    args = dict(epochs=3, batch_size=4, grad_accum=1, lr=1e-3, checkpoint_every=2, params="mlp")
    full = erasekit.unlearn(lm, "npo", "forget10", progress=False, **args)
    steps = full.info["log"]["steps"]
    assert steps >= 5 and len(full.info["log"]["loss"]) == steps
    original = unlearn_mod._Unlearning.loss

    def crash_at_step_5(self, step, gen, micro):
        if step == 5:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, step, gen, micro)

    monkeypatch.setattr(unlearn_mod._Unlearning, "loss", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        erasekit.unlearn(lm, "npo", "forget10", progress=False, checkpoint_dir=tmp_path / "ck", **args)
    monkeypatch.setattr(unlearn_mod._Unlearning, "loss", original)
    resumed = erasekit.unlearn(lm, "npo", "forget10", progress=False, checkpoint_dir=tmp_path / "ck", resume=True, **args)
    assert resumed.info["log"]["start_step"] == 4
    assert set(resumed.weights) == set(full.weights)
    for k in full.weights:
        assert torch.equal(resumed.weights[k], full.weights[k]), k
    with pytest.raises(ConfigError, match="another run.*params.beta"):
        erasekit.unlearn(lm, "npo", "forget10", progress=False, checkpoint_dir=tmp_path / "ck", resume=True, **args, beta=0.2)
    with pytest.raises(ErasekitError, match="does not train"):
        erasekit.unlearn(lm, "leace", "forget10", progress=False, checkpoint_dir=tmp_path / "other")


@pytest.mark.parametrize("method", ["ga", "task-vector"])
def test_every_fine_tuning_method_can_train_a_lora(models, method):
    """``lora_rank`` is an option of the loop, not of one method: the result is LoRA factors only, and
    applying them changes the model as the dense run's direction does (task vector: negated)."""
    lm = models["gpt2"]
    erasure = erasekit.unlearn(lm, method, "forget10", progress=False, lr=1e-3, lora_rank=2, params="mlp", **FAST)
    assert not erasure.weights and erasure.lora
    assert all(".mlp." in k for k in erasure.lora)
    assert {t.shape[0] for k, t in erasure.lora.items() if ".lora_A." in k} == {2}
    request = erasekit.forget_request(lm, "forget10")
    batch = encode_pairs(lm.tokenizer, request.forget[:4], lm.device)
    with torch.no_grad():
        before = float(nll(lm.model, batch))
        erasure.apply(lm)
        try:
            after = float(nll(lm.model, batch))
        finally:
            erasure.remove(lm)
        assert after > before  # ascent (and the negated fine-tuning) raises the forget answers' NLL
        assert float(nll(lm.model, batch)) == pytest.approx(before, abs=1e-6)


def test_a_non_finite_loss_stops_the_run_with_the_step(models):
    lm = models["gpt2"]
    request = erasekit.forget_request(lm, "forget10")

    def exploding(step):
        return nll(step.model, step.forget) * float("inf"), {}

    with pytest.raises(ErasekitError, match="the loss became inf at step 0; lower the learning rate"):
        fit(lm, request, UnlearnConfig(epochs=1), exploding, progress=False)


@pytest.mark.parametrize("schedule, hf_name", [("linear", "linear"), ("cosine", "cosine"), ("constant", "constant_with_warmup")])
@pytest.mark.parametrize("steps, warmup", [(20, 1), (13, 4), (5, 0)])
def test_lr_schedule_is_transformers_scheduler(schedule, hf_name, steps, warmup):
    """The loop's lr at every step equals what ``transformers.get_scheduler`` gives the optimiser for
    that step (the reference loops: open-unlearning's TOFU runs with linear, MUSE constant / cosine)."""
    from transformers import get_scheduler

    from erasekit.training.engine import lr_factor

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = get_scheduler(hf_name, opt, num_warmup_steps=warmup, num_training_steps=steps)
    for step in range(steps):
        assert 1e-3 * lr_factor(schedule, step, steps, warmup) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


def test_unlearning_warmup_is_counted_as_open_unlearning_counts_it():
    from erasekit.training.lm import UnlearnConfig, warmup_steps

    assert warmup_steps(40, UnlearnConfig()) == 1  # TOFU forget01: int(1 * 40 // 32)
    assert warmup_steps(200, UnlearnConfig()) == 6 and warmup_steps(31, UnlearnConfig()) == 0
    assert warmup_steps(200, UnlearnConfig(warmup_epochs=0.0)) == 0
    assert UnlearnConfig().lr_schedule == "linear"
    with pytest.raises(ConfigError, match="lr_schedule="):
        UnlearnConfig(lr_schedule="step")


def test_the_unlearning_run_decays_its_lr_to_zero(models, monkeypatch):
    """fit hands the schedule to the loop: with the default linear schedule the last step's lr is
    ``lr / (steps − warmup)`` with one epoch of warm-up, and the first is 0 (transformers' warm-up)."""
    import erasekit.training.engine as engine

    seen: list[float] = []
    real = engine._set_lr

    def spy(opt, settings, step):
        real(opt, settings, step)
        seen.append(opt.param_groups[0]["lr"])

    monkeypatch.setattr(engine, "_set_lr", spy)
    erasekit.unlearn(models["gpt2"], "ga", "forget10", progress=False, lr=1e-3, epochs=3, batch_size=8, grad_accum=1)
    warmup = len(erasekit.forget_request(models["gpt2"], "forget10").forget) // 8
    assert warmup >= 1 and seen[warmup] == pytest.approx(1e-3) and len(seen) > warmup + 1
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(1e-3 / (len(seen) - warmup), rel=1e-6)
    assert all(a <= b for a, b in zip(seen[:warmup], seen[1 : warmup + 1])) and all(
        a > b for a, b in zip(seen[warmup:], seen[warmup + 1 :])
    )
