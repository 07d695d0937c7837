"""ELM on tiny random GPT-2 and Llama models: the target is the paper's formula at every position,
the positions line up with and without a prefix, every loss term has a gradient, training moves the
model towards the target, and the consistency text is generated as the reference does."""

from __future__ import annotations

import random

import pytest
import torch

import erasekit
from erasekit.core.errors import ConfigError
from erasekit.core.registry import get_method
from erasekit.core.request import ForgetRequest, QAPair
from erasekit.methods.lm.elm import (
    aligned_logits,
    consistency_texts,
    continuation_nll,
    elm_blocks,
    elm_targets,
    eta_ramp,
    greedy_retain_loss,
    soft_cross_entropy,
    text_ids,
)
from erasekit.models.lm_batches import encode_pairs
from erasekit.testing import LM_ARCHITECTURES, tiny_lm


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {arch: tiny_lm(arch, directory=tmp_path_factory.mktemp(arch) / "m") for arch in LM_ARCHITECTURES}


def test_the_target_is_the_formula_at_every_position():
    """q_t = softmax(top_k[log p − η_t (log p_e − log p_n)]) with log-probabilities at temperature T."""
    torch.manual_seed(0)
    plain, expert, novice = (torch.randn(2, 5, 11) * 3 for _ in range(3))
    lengths = torch.tensor([4, 2])
    eta = eta_ramp(lengths, 10.0, 5)
    assert eta[0].tolist() == pytest.approx([1.0, 3.25, 5.5, 7.75, 10.0]) and eta[1].tolist() == pytest.approx([1, 5.5, 10, 0, 0])
    q = elm_targets(plain, expert, novice, eta, temperature=1.2, top_k=4)
    for i, t in ((0, 0), (0, 3), (1, 2)):
        lp, le, ln = (torch.log_softmax(x[i, t] / 1.2, -1) for x in (plain, expert, novice))
        edit = lp - eta[i, t] * (le - ln)
        keep = edit >= edit.sort(descending=True).values[3]
        want = torch.where(keep, edit, torch.tensor(float("-inf"))).softmax(-1)
        assert torch.allclose(q[i, t], want, atol=1e-6)
        assert (q[i, t] > 0).sum() == 4
    # Without top-k and at eta 1 on position 0: p_e / p_n shifts p exactly once.
    q1 = elm_targets(plain, expert, novice, torch.ones(2, 5), temperature=0, top_k=0)
    want = (plain.log_softmax(-1) - expert.log_softmax(-1) + novice.log_softmax(-1)).softmax(-1)
    assert torch.allclose(q1, want, atol=1e-6)


@pytest.mark.parametrize("arch", LM_ARCHITECTURES)
def test_aligned_positions_predict_the_same_tokens_with_and_without_a_prefix(models, arch):
    lm = models[arch]
    tok = lm.tokenizer
    pairs = erasekit.forget_request(lm, "forget10").forget[:3]
    texts = text_ids(tok, pairs)
    prefixes = [tok("A reader who knows " + p.subject + " well writes:", add_special_tokens=False).input_ids for p in pairs]
    prefixes[1] = prefixes[1][:3]  # rows of different prefix lengths in one padded batch
    with torch.no_grad():
        batched, valid = aligned_logits(lm.model, tok, texts, prefixes)
        for i, (p, t) in enumerate(zip(prefixes, texts)):
            alone = lm.model(input_ids=torch.tensor([[tok.bos_token_id, *p, *t]])).logits[0].float()
            n = len(t)
            assert valid[i].sum() == n + 1
            assert torch.allclose(batched[i, : n + 1], alone[len(p) : len(p) + n + 1], atol=1e-4)
            # position len(p) + j predicts text token j: the row without prefix agrees on which token
            plain, _ = aligned_logits(lm.model, tok, [t], None)
            assert plain.shape[1] == n + 1


@pytest.mark.parametrize("arch", LM_ARCHITECTURES)
def test_last_position_log_probabilities_do_not_depend_on_padding_or_chunks(models, arch):
    from erasekit.methods.lm.elm import _last_logprobs

    lm = models[arch]
    tok = lm.tokenizer
    rows = [r[:n] for r, n in zip(text_ids(tok, erasekit.forget_request(lm, "forget10").forget[:5]), (3, 9, 14, 5, 11))]
    with torch.no_grad():
        batched = _last_logprobs(lm.model, tok, rows, lm.device, chunk=2)
        for i, r in enumerate(rows):
            alone = lm.model(input_ids=torch.tensor([[tok.bos_token_id, *r]])).logits[0, -1].float().log_softmax(-1)
            assert torch.allclose(batched[i], alone, atol=1e-4)


def test_every_loss_term_has_a_gradient(models):
    lm = models["gpt2"]
    tok, model = lm.tokenizer, lm.model
    pairs = erasekit.forget_request(lm, "forget10").forget[:2]
    texts = text_ids(tok, pairs)
    w = model.transformer.h[0].mlp.c_fc.weight
    with torch.no_grad():
        q = torch.softmax(torch.randn(2, max(map(len, texts)) + 1, len(tok)), -1)
    student, valid = aligned_logits(model, tok, texts, None)
    terms = {
        "erase": soft_cross_entropy(student, q, valid),
        "retain": greedy_retain_loss(model, model, encode_pairs(tok, pairs, lm.device)),
        "consistency": continuation_nll(model, tok, texts, [texts[1][:4], texts[0][:2]]),
    }
    for name, loss in terms.items():
        (g,) = torch.autograd.grad(loss, w)
        assert torch.isfinite(loss) and g.abs().sum() > 0, name


def test_training_moves_the_model_towards_its_target_on_the_chosen_blocks_only(models):
    lm = models["llama"]
    tok = lm.tokenizer
    request = erasekit.forget_request(lm, "forget10")
    one = dict(expert_templates=["A reader who knows {concept} well writes:"],
               novice_templates=["A reader who never heard of {concept} guesses:"])  # fmt: skip
    fast = dict(progress=False, batch_size=8, grad_accum=1, retain_scale=0.0, consistency_scale=0.0, eta=5.0, **one)
    blocks = erasekit.unlearn(lm, "elm", request, epochs=1, **fast)
    assert list(elm_blocks(lm.model, "")) == [0]
    assert sorted(blocks.weights) == sorted(
        f"model.model.layers.0.{m}.weight"
        for m in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    )
    # A random tiny model cannot sharpen its output through block 0 alone (its head is tiny), so the
    # effect is measured with every parameter training.
    erasure = erasekit.unlearn(lm, "elm", request, epochs=5, lr=1e-2, params="all", **fast)

    texts = text_ids(tok, request.forget)
    concepts = [p.subject for p in request.forget]

    def prefixed(template):
        return [tok(template.format(concept=c), add_special_tokens=False).input_ids for c in concepts]

    with torch.no_grad():
        plain, valid = aligned_logits(lm.model, tok, texts, None)
        expert, _ = aligned_logits(lm.model, tok, texts, prefixed(one["expert_templates"][0]))
        novice, _ = aligned_logits(lm.model, tok, texts, prefixed(one["novice_templates"][0]))
        lengths = torch.tensor([len(t) for t in texts])
        q = elm_targets(plain, expert, novice, eta_ramp(lengths, 5.0, plain.shape[1]), 1.2, 50)
        before = soft_cross_entropy(plain, q, valid)
        with erasure.applied(lm):
            after_logits, _ = aligned_logits(lm.model, tok, texts, None)
        after = soft_cross_entropy(after_logits, q, valid)
    assert after < before - 0.5, (before, after)


def test_consistency_text_starts_with_a_change_of_subject_and_fits_the_context(models):
    lm = models["gpt2"]
    tok = lm.tokenizer
    cfg = get_method("elm").make_config({"consistency_min_tokens": 5, "consistency_max_tokens": 8,
                                         "digressions": ["Let us talk about something else."]})  # fmt: skip
    texts = text_ids(tok, erasekit.forget_request(lm, "forget10").forget[:4])
    digression = tok("Let us talk about something else.", add_special_tokens=False).input_ids

    def sample(seed):
        return consistency_texts(
            lm.model, tok, texts, ["Ala Brakow"] * 4, cfg, random.Random(0), torch.Generator().manual_seed(seed)
        )

    first = sample(0)
    assert first == sample(0) and first != sample(1)
    for c in first:
        assert c[: len(digression)] == digression
        n = len(c) - len(digression)
        assert 5 <= n <= 8 or (n < 5 and c[-1] == tok.eos_token_id)
    long = get_method("elm").make_config({"consistency_min_tokens": 500, "consistency_max_tokens": 500})
    (c,) = consistency_texts(lm.model, tok, texts[:1], ["x"], long, random.Random(0), torch.Generator().manual_seed(0))
    assert 1 + len(texts[0]) + len(c) <= lm.model.config.n_positions


def test_pairs_carry_their_subject_and_bad_settings_are_refused(models, tmp_path):
    lm = models["gpt2"]
    request = erasekit.forget_request(lm, "forget10")
    assert all(p.subject and p.subject in p.question for p in request.forget)
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"question": "Who?", "answer": "Me.", "subject": "Ala"}\n{"question": "Why?", "answer": "So."}\n')
    pairs = erasekit.forget_request(lm, str(f)).forget
    assert [p.subject for p in pairs] == ["Ala", ""]
    assert ForgetRequest.from_dict(request.to_dict()).forget == request.forget
    spec = get_method("elm")
    for bad, match in (({"expert_templates": ["no placeholder"]}, "concept"), ({"layers": "x"}, "start,end"),
                       ({"consistency_min_tokens": 9, "consistency_max_tokens": 3}, "exceed"), ({"params": "mine"}, "params")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            spec.make_config(bad)
    with pytest.raises(ConfigError, match="blocks 0..2"):
        erasekit.unlearn(lm, "elm", request, progress=False, layers="2,9")
    with pytest.raises(ConfigError, match="retain pairs"):
        erasekit.unlearn(lm, "elm", ForgetRequest("x", [QAPair("Who?", "Me.")]), progress=False)


@pytest.mark.parametrize("arch", LM_ARCHITECTURES)
def test_lora_factors_reproduce_the_lora_model_in_the_weights_own_layout(models, arch):
    """(alpha/r) B A on a Linear, its transpose on GPT-2's Conv1D: the exported factors added to the
    weights give the LoRA model's outputs."""
    import copy

    from erasekit.core.erasure import lora_deltas
    from erasekit.training.lm import LoraSpec, inject_lora, lora_factors, select_parameters

    lm = models[arch]
    spec = LoraSpec(rank=4, alpha=8.0)
    with_lora = copy.deepcopy(lm.model).float().eval()
    inject_lora(with_lora, select_parameters(with_lora, r"re:\.(0)\.(attn|self_attn|mlp)\.[^.]+\.weight$"), spec)
    torch.manual_seed(0)
    for name, p in with_lora.named_parameters():
        if ".lora_B." in name:
            p.data.normal_(0, 0.5)  # peft starts B at zero; make the update visible
    ids = encode_pairs(lm.tokenizer, erasekit.forget_request(lm, "forget10").forget[:3], "cpu")["input_ids"]
    merged = copy.deepcopy(lm.model).float().eval()
    with torch.no_grad():
        want = with_lora(input_ids=ids).logits
        for key, delta in lora_deltas(lora_factors(with_lora, spec)).items():
            merged.get_parameter(key.removeprefix("model.")).add_(delta)
        got = merged(input_ids=ids).logits
        assert not torch.allclose(want, lm.model(input_ids=ids).logits.float(), atol=1e-3)
    assert torch.allclose(got, want, atol=1e-4)


def test_elm_with_a_lora_stores_factors_that_apply_and_remove(models, tmp_path):
    from erasekit.core.erasure import Erasure

    lm = models["gpt2"]
    before = {k: p.detach().clone() for k, p in lm.model.named_parameters()}
    erasure = erasekit.unlearn(lm, "elm", "forget10", progress=False, epochs=1, batch_size=8, grad_accum=1, lr=1e-2,
                               lora_rank=4, consistency_min_tokens=4, consistency_max_tokens=6)  # fmt: skip
    assert not erasure.weights and len(erasure.lora) == 8  # A and B of c_attn, c_proj, c_fc, c_proj of block 0
    erasure.save(tmp_path / "e")
    loaded = Erasure.load(tmp_path / "e")
    with loaded.applied(lm):
        changed = {k for k, p in lm.model.named_parameters() if not torch.equal(p, before[k])}
    assert changed == {f"transformer.h.0.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert all(torch.equal(p, before[k]) for k, p in lm.model.named_parameters())
