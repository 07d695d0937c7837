"""Language-model side beyond the methods: metrics (TOFU / MUSE definitions), the gate, the unlearning
evaluation, the attacks and their one ASR definition, the command line, and fact-world training
(smoke run, resume, offline loading). Tiny random models built from configs; nothing is downloaded."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import erasekit
from erasekit.api.unlearning import attack_lm, evaluate_lm
from erasekit.attacks.lm.quantization import quantize_weight
from erasekit.cli import app
from erasekit.core.errors import ConfigError
from erasekit.core.registry import all_attacks, get_attack
from erasekit.evaluation.lm.evaluate import privacy_leak, run_gate
from erasekit.evaluation.lm.metrics import (
    answer_probability,
    auc,
    contains_value,
    harmonic_mean,
    ks_pvalue,
    min_k_mean,
    rouge_l_recall,
    token_logprobs,
    truth_ratio_score,
    truth_ratios,
)
from erasekit.testbeds.facts.factworld import FactWorld
from erasekit.testing import tiny_lm

runner = CliRunner()


# -- metrics ------------------------------------------------------------------------------------------
def test_ks_pvalue_is_scipys_exact_two_sample_test():
    """Reference numbers from ``scipy.stats.ks_2samp`` (exact method), as TOFU's and open-unlearning's
    forget quality; the asymptotic Stephens form gives 0.497 and 0.059 for the two n = m = 20 cases."""
    assert ks_pvalue([1, 2, 3], [1, 2, 3]) == 1.0
    assert ks_pvalue([1, 2, 3, 4, 5], [3, 4, 5, 6, 7]) == pytest.approx(0.873015873015873, rel=1e-12)  # D = 0.4
    assert ks_pvalue(range(20), range(5, 25)) == pytest.approx(0.571336004933722, rel=1e-12)  # D = 0.25
    assert ks_pvalue(range(20), range(8, 28)) == pytest.approx(0.08105771161340149, rel=1e-12)  # D = 0.40
    assert ks_pvalue([1, 2, float("nan")], [1, 2]) == 1.0  # a missing score is dropped, not matched to another question


def test_truth_ratio_scores_drop_missing_rows_with_their_values():
    ratios = torch.tensor([0.5, float("nan"), 2.0])
    assert truth_ratio_score(ratios, forget=True) == pytest.approx(0.5)  # min(R, 1/R) of the two real rows
    assert truth_ratio_score(ratios, forget=False) == pytest.approx(0.25)  # max(0, 1 - R): 0.5 and 0


def test_rouge_l_recall_is_rouge_scores_with_stemming():
    """Reference values of ``rouge_score.RougeScorer(["rougeL"], use_stemmer=True).score(gt, gen)``
    (TOFU): punctuation is not a word, stems match, recall counts the reference's tokens."""
    assert rouge_l_recall("Ala was born in Aldmoor.", "Ala was born in Aldmoor.") == 1.0
    assert rouge_l_recall("born Ala", "Ala was born") == pytest.approx(1 / 3)
    assert rouge_l_recall("Ala was born in Aldmoor.", "Ala was born in Hollowmere.") == pytest.approx(0.8)  # 4 of 5
    assert rouge_l_recall("X writes children's books", "X writes children's books.") == 1.0  # the full stop is no word
    assert rouge_l_recall("She writes novels", "She wrote a novel") == pytest.approx(0.5)  # novels ~ novel; wrote != writes
    assert math.isnan(rouge_l_recall("anything", "..."))


def test_min_k_keeps_int_k_n_tokens_at_least_one():
    lp = torch.tensor([-5.0, -1.0, -3.0, -2.0, -4.0])  # n = 5, k = 0.4: int(2.0) = 2 lowest -> (-5 - 4) / 2
    assert min_k_mean(lp, 0.4).item() == pytest.approx(-4.5)
    assert min_k_mean(lp[:2], 0.4).item() == pytest.approx(-5.0)  # int(0.8) = 0 -> the one lowest, as open-unlearning
    assert min_k_mean(lp[:3], 0.5).item() == pytest.approx(-5.0)  # int(1.5) = 1 (ceil would take two)


def test_privacy_leak_is_muses_privleak():
    """MUSE ``eval.py``: ``(AUC − AUC_retrain) / AUC_retrain · 100`` on the forget-vs-holdout AUC with the
    forget split labelled 0: a model that ranks every forget text as more familiar than every holdout
    text has AUC 0 and, against an oracle at 0.5, PrivLeak −100 (under-unlearned)."""
    assert auc([3, 4], [1, 2]) == 1.0 and auc([1, 2], [1, 2]) == 0.5 and auc([1], [2]) == 0.0
    forget_scores, holdout_scores = [-0.1, -0.2, -0.3], [-2.0, -2.5, -0.25]  # mean log p: higher = more familiar
    model_auc = auc(holdout_scores, forget_scores)  # holdout positive: 1 of 9 pairs (-0.25 > -0.3)
    assert model_auc == pytest.approx(1 / 9)
    assert privacy_leak(model_auc, 0.5) == pytest.approx((1 / 9 - 0.5) / 0.5 * 100)
    assert privacy_leak(0.0, 0.5) == -100.0 and privacy_leak(0.5, 0.5) == 0.0 and privacy_leak(0.6, 0.5) > 0


def test_auc_harmonic_mean_and_exact_answers():
    assert harmonic_mean([0.5, 0.5]) == 0.5 and harmonic_mean([1.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        harmonic_mean([0.5, float("nan")])
    assert contains_value("X was born in Juniper Bay.", "Juniper Bay")
    assert not contains_value("X was born in Juniper.", "Juniper Bay") and not contains_value("19510", "1951")


def test_probabilities_and_truth_ratios_read_the_answer_tokens_only():
    lm = tiny_lm("llama")
    q, a = "Where was Ala Brakow born?", "Ala Brakow was born in Aldmoor."
    lp = token_logprobs(lm.model, lm.tokenizer, [q], [a])[0]
    ids = lm.tokenizer(q + " " + a, add_special_tokens=False).input_ids
    full = torch.log_softmax(lm.model(torch.tensor([[lm.tokenizer.bos_token_id, *ids]])).logits[0, :-1], -1)
    manual = full[torch.arange(len(ids)), torch.tensor(ids)][-len(lp) :]
    assert len(lp) == len(lm.tokenizer(a, add_special_tokens=False).input_ids)
    assert torch.allclose(lp, manual, atol=1e-5)
    p = answer_probability(lm.model, lm.tokenizer, [q], [a])
    assert p.item() == pytest.approx(lp.mean().exp().item(), rel=1e-5)
    wrong = ["Ala Brakow was born in Oakridge.", "Ala Brakow was born in Ironvale."]
    r = truth_ratios(lm.model, lm.tokenizer, [q], [a], [wrong])
    pw = answer_probability(lm.model, lm.tokenizer, [q, q], wrong)
    assert r.item() == pytest.approx((pw[0] * pw[1]).sqrt().item() / p.item(), rel=1e-5)  # geometric mean of two


def test_truth_ratio_is_tofus_geometric_mean_of_average_losses():
    """TOFU ``evaluate_util.py``: ``exp(mean_k avg_loss(perturbed_k))`` over ``exp(avg_loss(true))``,
    inverted to erasekit's ``R = P(perturbed) / P(true)``; by hand with fixed per-answer losses."""
    lm = tiny_lm("llama")
    q, a = "Where was Ala Brakow born?", "Ala Brakow was born in Aldmoor."
    wrong = ["Ala Brakow was born in Oakridge.", "Ala Brakow was born in Ironvale.", "Ala Brakow was born in Yew."]
    losses = [-token_logprobs(lm.model, lm.tokenizer, [q], [x])[0].mean().item() for x in [a, *wrong]]
    tofu = math.exp(sum(losses[1:]) / 3 - losses[0])  # TOFU's statistic is P(true) / GM P(perturbed)
    r = truth_ratios(lm.model, lm.tokenizer, [q], [a], [wrong]).item()
    assert r == pytest.approx(1 / tofu, rel=1e-5)
    arithmetic = sum(math.exp(-x) for x in losses[1:]) / 3 / math.exp(-losses[0])
    assert arithmetic >= r  # AM >= GM: the arithmetic mean would be a different (larger) number


# -- gate, evaluation, attacks ------------------------------------------------------------------------
def test_gate_of_an_untrained_model_fails_with_its_numbers(lm_dir):
    lm = erasekit.load_lm(lm_dir)
    report = run_gate(lm, FactWorld(20), excluded="forget10")
    assert not report["passed"] and report["accuracy_train"] < 0.5 and report["filler_perplexity"] > 3
    assert report["n_questions"] == 18 * 20 and 0 <= report["accuracy_excluded"] <= 1


def test_evaluation_report_has_forget_retain_base_and_oracle_blocks(lm_dir, tmp_path):
    erasure = erasekit.unlearn(erasekit.load_lm(lm_dir), "ga", "forget10", progress=False, epochs=1, lr=1e-3)
    erasure.save(tmp_path / "e")
    report = evaluate_lm(lm_dir, tmp_path / "e", oracle=str(lm_dir), out=tmp_path / "eval.json")
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["erasekit_output"] == "evaluation" and set(report) <= set(on_disk)
    assert {"forget", "retain", "base", "oracle", "cost"} <= set(report)
    f = report["forget"]
    assert f["forgotten"]["rate"] == pytest.approx(1 - f["accuracy"]["rate"]) and len(f["forgotten"]["ci95"]) == 2
    assert 0 <= f["forget_quality"] <= 1 and math.isfinite(f["privacy_leak"]) and 0 < report["retain"]["model_utility"] < 1
    assert report["oracle"]["forget_quality"] == 1.0 and report["oracle"]["privacy_leak"] == 0.0  # the oracle against itself
    for block in ("base", "oracle"):  # rates carry their intervals in every block
        assert set(report[block]["forgotten"]) == {"rate", "n", "ci95"} and set(report[block]["retain_accuracy"]) == {
            "rate",
            "n",
            "ci95",
        }
    with pytest.raises(ConfigError, match="forget split"):
        evaluate_lm(lm_dir, None)


def test_language_model_attacks_are_registered_apart_from_the_image_ones():
    names = {a.name for a in all_attacks("causal-lm")}
    assert names == {"paraphrase", "few-shot", "quantization", "relearning", "probe"}
    assert get_attack("quantization", "causal-lm") is not get_attack("quantization")
    with pytest.raises(ConfigError, match="unknown language-model attack"):
        get_attack("soft-prompt", "causal-lm")


@pytest.mark.parametrize("name", ["paraphrase", "few-shot", "quantization", "relearning", "probe"])
def test_zero_budget_is_the_plain_question_and_the_budget_is_spent(lm_dir, name):
    lm = erasekit.load_lm(lm_dir)
    erasure = erasekit.unlearn(lm, "refusal-guard", "forget10", progress=False)
    zero = attack_lm(lm, erasure, name, budget=0, progress=False)
    assert zero.asr == zero.asr_before == 0.0 and zero.curve == [[0, 0.0]]  # the guard refuses every plain question
    full = attack_lm(lm, erasure, name, progress=False)
    assert full.trials == (10 if name == "relearning" else 20) and full.curve[-1][0] == full.budget > 0
    assert all(r.found for r in full.records)  # every trial records what the attack tried last


def test_quantization_rounds_to_the_grid():
    w = torch.randn(4, 256)
    q = quantize_weight(w, 4, 128)
    for row_q, row_w in zip(q.view(4, 2, 128), w.view(4, 2, 128)):
        for gq, gw in zip(row_q, row_w):
            step = gw.abs().max() / 7
            assert torch.allclose(gq / step, (gq / step).round(), atol=1e-4)  # multiples of the scale
            assert (gq - gw).abs().max() <= step / 2 + 1e-6 and len(gq.unique()) <= 16
    assert torch.equal(quantize_weight(w.T.contiguous(), 4, 128, transposed=True), q.T)


# -- command line -------------------------------------------------------------------------------------
def test_cli_unlearn_evaluate_attack_and_gate(lm_dir, tmp_path):
    e = tmp_path / "erasure"
    r = runner.invoke(app, ["erase", "--model", str(lm_dir), "--method", "npo", "--forget", "forget10", "--out", str(e),
                            "--set", "epochs=1", "--set", "lr=1e-3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "unlearned forget10 (40 pairs) with npo" in r.output and (e / "erasure.json").is_file()
    r = runner.invoke(
        app,
        ["evaluate", "--model", str(lm_dir), "--erasure", str(e), "--oracle", str(lm_dir), "--out", str(tmp_path / "ev.json")],
    )
    assert r.exit_code == 0, r.output
    assert "forgot" in r.output and json.loads((tmp_path / "ev.json").read_text())["split"] == "forget10"
    r = runner.invoke(
        app,
        [
            "attack",
            "--model",
            str(lm_dir),
            "--erasure",
            str(e),
            "--attack",
            "paraphrase,quantization",
            "--out",
            str(tmp_path / "a.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert [a["attack"] for a in json.loads((tmp_path / "a.json").read_text())["attacks"]] == ["paraphrase", "quantization"]
    r = runner.invoke(app, ["testbed", "check", "--llm", "--model", str(lm_dir), "--out", str(tmp_path / "gate.json")])
    assert r.exit_code == 1 and "gate FAILED" in r.output  # an untrained model fails, with its report written
    assert json.loads((tmp_path / "gate.json").read_text())["passed"] is False


def test_cli_errors_are_one_line_and_write_nothing(lm_dir, tmp_path):
    cases = [
        (["erase", "--model", str(lm_dir), "--out", str(tmp_path / "x")], "nothing to unlearn"),
        (["erase", "--model", str(lm_dir), "--forget", "forget99", "--out", str(tmp_path / "x")], "forget99"),
        (["erase", "--model", str(lm_dir), "--forget", "forget10", "--set", "lamb=1", "--out", str(tmp_path / "x")], "no parameter lamb"),
        # the image default is refused on a language model, never replaced by another method
        (["erase", "--model", str(lm_dir), "--method", "uce", "--forget", "forget10", "--out", str(tmp_path / "x")], "method 'uce' erases from diffusion pipelines"),
        (["erase", "--model", str(lm_dir), "--method", "esd", "--forget", "forget10", "--out", str(tmp_path / "x")], "for language models use one of"),
        (["erase", "--forget", "forget01", "--out", str(tmp_path / "x")], "--forget applies to language models only"),
        (["erase", "--model", str(lm_dir), "--forget", "forget10", "--out", "."], "current directory"),
        (["attack", "--model", str(lm_dir), "--attack", "soft-prompt", "--concept", "forget10"], "unknown language-model attack"),
        (["testbed", "train", "--llm", "--exclude", "forget50", "--workdir", str(tmp_path / "w")], "forget50"),
        (["erase", "--model", "no-org/no-model", "--forget", "forget01", "--out", str(tmp_path / "x")], "as a causal language model"),
    ]  # fmt: skip
    for args, fragment in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert fragment in r.output and len(r.output.strip().splitlines()) == 1, (args, r.output)
    assert not (tmp_path / "x").exists() and not (tmp_path / "w").exists()


# -- training -----------------------------------------------------------------------------------------
def test_fact_world_training_smoke_resume_and_offline_loading(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from erasekit.testbeds.facts.train import LLMTrainConfig, LLMTrainer

    cfg = LLMTrainConfig.smoke()
    cfg.exclude = "forget10"
    out = LLMTrainer(tmp_path / "w", cfg, progress=False, log=lambda m: None).run(out=tmp_path / "model")
    info = json.loads((out / "testbed.json").read_text())
    assert info["excluded"] == "forget10" and info["reference"] == "testbed-llm"
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.n_layer == 1 and tok.convert_ids_to_tokens(tok("Where was").input_ids) == ["Where", "was"]
    meta = json.loads((tmp_path / "w" / "ckpt-llm.json").read_text())
    assert meta["step"] > 0
    logs: list[str] = []
    cfg.epochs = 2  # continue the same run for one more epoch
    LLMTrainer(tmp_path / "w", cfg, progress=False, log=logs.append).run(resume=True, out=tmp_path / "model")
    assert any(f"resuming from step {meta['step']}" in m for m in logs)
    assert json.loads((tmp_path / "w" / "ckpt-llm.json").read_text())["step"] == 2 * meta["step"]
    # the excluded authors' texts are not in the training data
    from erasekit.testbeds.facts.train import training_texts

    world = FactWorld(cfg.n_authors)
    texts = " ".join(training_texts(world, "forget10", 0, cfg.n_filler))
    assert not any(a.name in texts for a in world.forget("forget10")) and world.authors[0].name in texts


def test_bench_writes_runs_and_the_language_model_sections(lm_dir, tmp_path):
    from erasekit.api.bench_llm import bench_llm
    from erasekit.core.outputs import write_markdown

    write_markdown(tmp_path / "results.md", "# Results on the testbed\n\nimage rows\n", "results")
    runs = bench_llm(str(lm_dir), ["ga", "refusal-guard"], ["forget10"], "paraphrase", {"ga": {"epochs": 1}},
                     out_dir=tmp_path / "runs", report=tmp_path / "results.md", robustness=tmp_path / "robustness.md",
                     progress=False, oracle=str(lm_dir))  # fmt: skip
    assert [r["label"] for r in runs] == ["base", "oracle", "ga", "refusal-guard"]
    assert sorted(p.name for p in (tmp_path / "runs").glob("forget10-*.json")) == [
        "forget10-base.json", "forget10-ga.json", "forget10-oracle.json", "forget10-refusal-guard.json"]  # fmt: skip
    text = (tmp_path / "results.md").read_text()
    assert "image rows" in text and "## Language models" in text and "| forget10 | refusal-guard |" in text
    robust = (tmp_path / "robustness.md").read_text()
    assert "| forget10 | *oracle* |" in robust and "paraphrase" in robust
    write_markdown(tmp_path / "results.md", "# Results on the testbed\n\nimage rows v2\n", "results")  # the image bench
    assert "| forget10 | refusal-guard |" in (tmp_path / "results.md").read_text()  # keeps the language-model section


def test_export_writes_a_plain_transformers_model_and_refuses_hooks(lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = erasekit.load_lm(lm_dir)
    erasure = erasekit.unlearn(lm, "ga", "forget10", progress=False, epochs=1, lr=1e-3)
    erasure.save(tmp_path / "e")
    r = runner.invoke(app, ["export", str(tmp_path / "e"), "--model", str(lm_dir), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with erasure.applied(lm):
        for name, p in lm.model.named_parameters():
            assert torch.equal(exported.get_parameter(name), p), name
    assert (tmp_path / "m" / "testbed.json").is_file() and (tmp_path / "m" / "erasure.json").is_file()
    erasekit.unlearn(lm, "refusal-guard", "forget10", progress=False).save(tmp_path / "g")
    r = runner.invoke(app, ["export", str(tmp_path / "g"), "--model", str(lm_dir), "--out", str(tmp_path / "m2")])
    assert r.exit_code == 2 and "cannot hold" in r.output and not (tmp_path / "m2").exists()


def test_model_names_and_directories_resolve_with_clear_errors(tmp_path):
    from erasekit.core.errors import ModelLoadError
    from erasekit.models.causal_lm import is_lm_name, resolve_lm

    assert erasekit.testbed_dir("llm").name == "llm" and erasekit.testbed_dir("llm-oracle-forget05").name == "llm-oracle-forget05"
    with pytest.raises(ValueError, match="unknown testbed"):
        erasekit.testbed_dir("llm-oracle-forget10")
    assert is_lm_name("testbed-llm") and not is_lm_name("testbed") and not is_lm_name(str(tmp_path))
    assert is_lm_name("org/model", hub=True) and not is_lm_name("org/model")
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_lm(tmp_path)
    with pytest.raises(ModelLoadError, match="unknown model"):
        resolve_lm("not a model")
