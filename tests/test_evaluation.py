"""The evaluator's arithmetic, with a fake generator whose 'erasure' is known exactly."""

import contextlib

import numpy as np
import pytest
from fakes import OracleJudge, WorldPipe

from erasekit.core.errors import ConfigError
from erasekit.evaluation import evaluate_on_testbed
from erasekit.evaluation.metrics import frechet_distance
from erasekit.evaluation.prompts import prompt_set, resolve_concept
from erasekit.generation import SamplingConfig
from erasekit.testbeds.image import world

FAST = SamplingConfig(steps=1, guidance_scale=1.0)


class FakeErasure:
    """While applied, the fake pipe draws ``replacement`` wherever a prompt names the target (or a synonym)."""

    method, params, timings, weights = "fake", {}, {"seconds": 0.1}, {}

    def __init__(self, pipe, target, replacement):
        self.pipe, self.words = pipe, set(world.word_forms(target))
        self.replacement = replacement

    def apply(self, pipe):
        def corrupt(prompt, a, seed):
            if self.words & set(prompt.split()):
                return world.Attributes(self.replacement, a.style, a.colour, a.background, a.watermark)
            return a

        pipe.corrupt = corrupt

    def remove(self, pipe):
        pipe.corrupt = lambda prompt, a, seed: a

    @contextlib.contextmanager
    def applied(self, pipe):
        self.apply(pipe)
        try:
            yield pipe
        finally:
            self.remove(pipe)

    def num_bytes(self):
        return 0


def test_prompt_sets_name_the_target_its_synonyms_and_the_rest_of_its_domain():
    plan = prompt_set("pentagram", n_contexts=6)
    assert resolve_concept("pentagram") == ("star", "shape")
    groups = {p.group for p in plan}
    assert groups == {"target", "synonym", "other"}
    assert {p.concept for p in plan if p.group == "other"} == set(world.SHAPES) - {"star"}
    assert all("star" in p.prompt for p in plan if p.group == "target")
    assert any(p.neighbour for p in plan)
    char = prompt_set("zorbo")
    assert {p.group for p in char} == {"target", "description", "other"}
    with pytest.raises(ConfigError, match="world concepts"):
        prompt_set("zebra")


def test_perfect_erasure_of_a_shape_is_measured_exactly():
    pipe = WorldPipe()
    report = evaluate_on_testbed(pipe, OracleJudge(pipe), ["star"], erasure=FakeErasure(pipe, "star", "circle"),
                                 seeds=2, n_contexts=6, sampling=FAST, progress=False)  # fmt: skip
    assert report["base"]["ua"] == 0.0 and report["base"]["ira"] == 1.0
    assert report["ua"] == 1.0 and report["ira"] == 1.0 and report["cra"] == 1.0
    t = report["targets"][0]
    assert t["ua_canonical"]["rate"] == 1.0 and t["ua_synonym"]["rate"] == 1.0
    assert t["cra_on_target"]["rate"] == 1.0
    assert report["fidelity"]["pixel_change"] == 0.0 and report["fidelity"]["labels_unchanged"]["rate"] == 1.0
    assert report["fidelity"]["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert report["fidelity"]["frechet_distance_target_prompts"] > 0


def test_an_erasure_that_spills_over_lowers_retention():
    pipe = WorldPipe()

    class Spill(FakeErasure):
        def apply(self, pipe):
            pipe.corrupt = lambda prompt, a, seed: world.Attributes("circle", a.style, a.colour, a.background, a.watermark)

    report = evaluate_on_testbed(pipe, OracleJudge(pipe), ["star"], erasure=Spill(pipe, "star", "circle"),
                                 seeds=1, n_contexts=6, sampling=FAST, progress=False)  # fmt: skip
    assert report["ua"] == 1.0
    assert report["ira"] == pytest.approx(1 / 7)  # only the circle prompts still show their shape
    assert report["fidelity"]["pixel_change"] > 0


def test_base_model_only_and_characters():
    pipe = WorldPipe()
    report = evaluate_on_testbed(
        pipe, OracleJudge(pipe), ["zorbo", "dotted"], seeds=1, n_contexts=4, sampling=FAST, progress=False
    )
    assert report["ua"] == 0.0 and report["ira"] == 1.0
    zorbo = report["targets"][0]
    assert zorbo["domain"] == "character" and zorbo["ua_description"]["rate"] == 0.0


def test_frechet_distance_is_zero_for_equal_sets_and_grows_with_shift():
    rng = np.random.default_rng(0)
    import torch

    a = torch.tensor(rng.normal(size=(200, 4)))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + 1.0) == pytest.approx(4.0, rel=1e-6)


def test_results_table_is_generated_from_run_json():
    from erasekit.report.tables import results_markdown

    pipe = WorldPipe()
    run = evaluate_on_testbed(pipe, OracleJudge(pipe), ["star"], erasure=FakeErasure(pipe, "star", "circle"),
                              seeds=1, n_contexts=4, sampling=FAST, progress=False)  # fmt: skip
    run.update(method="fake", concept="star")
    text = results_markdown([run], header="# Results")
    assert text.startswith("# Results") and "### shape" in text
    rows = [line for line in text.splitlines() if line.startswith("| star")]
    assert len(rows) == 2 and "*base model*" in rows[0] and "| fake |" in rows[1]
    assert "| 100 (" in rows[1]  # UA 100 % with its interval
    run["cost"]["params"] = {"variant": "2023"}  # a method with variants names the one that ran
    assert "| star | fake (2023) |" in results_markdown([run])


def test_watermark_prompts_split_its_subset_from_the_other_backgrounds():
    plan = prompt_set("watermark", n_contexts=6)
    assert resolve_concept("Watermark") == ("watermark", "watermark")
    subset = [p for p in plan if p.group == "target"]
    outside = [p for p in plan if p.group == "other"]
    assert len(subset) == 6 and all(world.WATERMARK.in_subset(p.expected) for p in subset)
    assert outside and not any(world.WATERMARK.in_subset(p.expected) for p in outside)
    assert all("watermark" not in p.prompt for p in plan)  # no caption names it


class WatermarkRemover(FakeErasure):
    """Removes the mark; with ``carrier`` set it also repaints white backgrounds that colour."""

    def __init__(self, carrier=None):
        self.carrier = carrier

    def apply(self, pipe):
        def corrupt(prompt, a, seed):
            bg = self.carrier if self.carrier and a.background == world.WATERMARK.value else a.background
            return world.Attributes(a.shape, a.style, a.colour, bg, False)

        pipe.corrupt = corrupt


@pytest.mark.parametrize("carrier", [None, "gray"])
def test_watermark_erasure_is_measured_with_its_carrier(carrier):
    pipe = WorldPipe()
    report = evaluate_on_testbed(pipe, OracleJudge(pipe), ["watermark"], erasure=WatermarkRemover(carrier),
                                 seeds=2, n_contexts=6, sampling=FAST, progress=False)  # fmt: skip
    base = report["base"]["targets"][0]
    assert report["base"]["ua"] == 0.5  # the fake draws the mark on even seeds of the subset
    assert base["watermark_elsewhere"]["rate"] == 0.0 and base["ira_neighbours"]["rate"] == 1.0
    t = report["targets"][0]
    assert report["ua"] == 1.0 and report["cra"] == 1.0 and t["cra_on_target"]["rate"] == 1.0
    if carrier is None:
        assert report["ira"] == 1.0 and t["ira_neighbours"]["rate"] == 1.0
    else:  # erasing the carrier with the mark: the subset's prompts lose their background
        assert t["ira_neighbours"]["rate"] == 0.0
        assert report["ira"] == pytest.approx(12 / (12 + 12))  # 6 subset prompts x 2 seeds lost, 2 x 3 x 2 kept
