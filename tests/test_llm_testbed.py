"""The shipped fact-world language model: it loads offline with plain transformers, knows its facts
(including held-out paraphrases), and unlearning on it really forgets while keeping most of the rest."""

from __future__ import annotations

import random

import pytest

import erasekit
from erasekit.api.unlearning import fact_world_of
from erasekit.evaluation.lm.evaluate import score_facts

pytestmark = pytest.mark.testbed_llm


@pytest.fixture(scope="module")
def lm():
    return erasekit.load_lm("testbed-llm", device="cpu")


def test_loads_offline_with_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(erasekit.testbed_dir("llm"))
    tok = AutoTokenizer.from_pretrained(erasekit.testbed_dir("llm"))
    assert sum(p.numel() for p in model.parameters()) < 10_000_000 and len(tok) == model.config.vocab_size


def test_knows_the_forget_authors_and_their_paraphrases(lm):
    world = fact_world_of(lm)
    s = score_facts(lm, world, world.forget("forget05"))
    assert s["train_hits"].mean() >= 0.95 and s["para_hits"].mean() >= 0.8


def test_npo_forgets_forget01_and_keeps_most_retain_answers(lm):
    world = fact_world_of(lm)
    retain = random.Random(0).sample(world.retain("forget01"), 10)
    erasure = erasekit.unlearn(lm, "npo", "forget01", progress=False)
    assert erasure.params["lr"] == 6e-4  # the model's recommended learning rate, recorded
    with erasure.applied(lm):
        forgot = 1 - score_facts(lm, world, world.forget("forget01"))["train_hits"].mean()
        kept = score_facts(lm, world, retain)["train_hits"].mean()
    assert forgot >= 0.6 and kept >= 0.6


def test_attacks_find_what_a_refusal_hides_and_not_what_retraining_removed(lm):
    """Relearning on half of the facts brings back the other half after IDK-DPO (which only learned to
    refuse) but not from the oracle; probes read the facts behind the refusal guard well above the
    oracle's floor."""
    from erasekit.api.unlearning import attack_lm

    idk = erasekit.unlearn(lm, "idk-dpo", "forget01", progress=False, lr=1e-3)  # at 6e-4 it hides only half
    relearned = attack_lm(lm, idk, "relearning", progress=False)
    floor = attack_lm("testbed-llm-oracle-forget01", None, "relearning", "forget01", progress=False)
    assert relearned.asr_before <= 0.3 and relearned.asr >= 0.6 and floor.asr <= 0.2
    guard = erasekit.unlearn(lm, "refusal-guard", "forget05", progress=False)
    probed = attack_lm(lm, guard, "probe", progress=False)
    probe_floor = attack_lm("testbed-llm-oracle-forget05", None, "probe", "forget05", progress=False)
    assert probed.asr_before == 0.0 and probed.asr >= probe_floor.asr + 0.15


def test_forget_quality_and_privacy_leak_separate_the_base_model_from_its_oracle(lm):
    from erasekit.api.unlearning import evaluate_lm

    report = evaluate_lm(lm, None, "forget01")  # the base model itself, against the shipped oracle
    assert report["oracle_model"] == "testbed-llm-oracle-forget01"
    base, oracle = report["base"], report["oracle"]
    assert base["forget_quality"] < 1e-3 and oracle["forget_quality"] == 1.0  # KS: the base is far from retraining
    assert (
        base["privacy_leak"] < -80 and oracle["privacy_leak"] == 0.0
    )  # MUSE sign: the base remembers its texts (under-unlearned)
    assert base["forgotten"]["rate"] == 0.0 and oracle["forgotten"]["rate"] >= 0.9
    assert abs(base["model_utility"] - oracle["model_utility"]) < 0.05  # retraining without two authors costs nothing else


def test_elm_reads_the_models_own_expert_novice_judgement_and_forgets(lm):
    """The world taught the model that a novice guesses: the forget answers are much less likely
    after the novice prefix than after the expert one, and ELM, trained towards that, forgets."""
    from erasekit.evaluation.lm.metrics import token_logprobs
    from erasekit.testbeds.facts.factworld import EXPERT_PREFIXES, NOVICE_PREFIXES

    world = fact_world_of(lm)
    pairs = [(a, q) for a in world.forget("forget01") for q in world.qa(a)]

    def mean_logp(prefix):
        prompts = [f"{prefix.format(name=a.name)} {q.question}" for a, q in pairs]
        return sum(float(lp.sum()) for lp in token_logprobs(lm.model, lm.tokenizer, prompts, [q.answer for _, q in pairs])) / len(
            pairs
        )

    assert mean_logp(EXPERT_PREFIXES[0]) - mean_logp(NOVICE_PREFIXES[0]) > 1.0
    retain = random.Random(0).sample(world.retain("forget01"), 10)
    erasure = erasekit.unlearn(lm, "elm", "forget01", progress=False, eta=10.0, layers="0,4")
    assert erasure.params["expert_templates"][0] == EXPERT_PREFIXES[0].replace("{name}", "{concept}")
    with erasure.applied(lm):
        forgot = 1 - score_facts(lm, world, world.forget("forget01"))["train_hits"].mean()
        kept = score_facts(lm, world, retain)["train_hits"].mean()
    assert forgot >= 0.8 and kept >= 0.7
