"""The gate's bookkeeping, checked with a fake generator that draws exactly what it is told."""

from fakes import OracleJudge, WorldPipe

from erasekit.core.stats import wilson
from erasekit.testbeds.image import gate, world


def _run(corrupt=None, seeds=8):
    pipe = WorldPipe(corrupt)
    return gate.run_gate(
        pipe, OracleJudge(pipe), seeds=seeds, sampling=gate.SamplingConfig(steps=1, guidance_scale=1.0), progress=False
    )


def test_prompt_sets_cover_the_spec():
    grid = gate.grid_prompts()
    combos = {(g.expected.shape, g.expected.colour, g.expected.style) for g in grid}
    assert len(combos) == len(world.SHAPES) * len(world.COLOURS) * len(world.STYLES)
    backs = [g.expected.background for g in grid]
    assert {backs.count(b) for b in world.BACKGROUNDS} == {len(grid) // len(world.BACKGROUNDS)}
    syn_words = {g.word for g in gate.synonym_prompts(grid)}
    assert syn_words == {s for c in (*world.SHAPES, *world.STYLES) for s in world.SYNONYMS[c]}
    names = {g.word for g in gate.character_prompts() if g.kind == "character"}
    assert names == set(world.CHARACTERS)


def test_perfect_generator_passes_with_exact_numbers():
    report = _run()
    assert report["passed"]
    assert all(v == 1.0 for v in report["accuracy"].values())
    assert report["synonym_gap"] == 0
    assert report["watermark"] == {"subset": 0.5, "elsewhere": 0.0, "training_share": world.WATERMARK.share}
    assert {"accuracy", "synonym_gap", "watermark", "passed", "per_prompt", "synonyms", "characters"} <= set(report)


def test_wrong_shapes_fail_the_shape_check():
    report = _run(lambda p, a, s: world.Attributes("circle", a.style, a.colour, a.background, a.watermark))
    assert report["accuracy"]["shape"] == 1 / len(world.SHAPES)
    assert not report["checks"]["shape"] and not report["passed"]
    assert report["checks"]["colour"]


def test_a_synonym_the_model_ignores_opens_a_gap():
    def corrupt(prompt, a, seed):
        if "pentagram" in prompt.split():
            return world.Attributes("heart", a.style, a.colour, a.background, a.watermark)
        return a

    report = _run(corrupt)
    assert report["synonym_gap"] == 100.0
    assert not report["checks"]["synonym_gap"]
    worst = max(report["synonyms"], key=lambda s: s["gap_points"])
    assert worst["word"] == "pentagram"


def test_watermark_everywhere_and_characters_without_their_attributes_fail():
    def corrupt(prompt, a, seed):
        if prompt.split()[-1] in world.CHARACTERS:
            a = world.Attributes(a.shape, "filled", a.colour, a.background, a.watermark)
        return world.Attributes(a.shape, a.style, a.colour, a.background, True)

    report = _run(corrupt, seeds=2)
    assert report["watermark"]["elsewhere"] == 1.0 and not report["checks"]["watermark_elsewhere"]
    assert report["watermark"]["subset"] == 1.0 and not report["checks"]["watermark_subset"]
    assert report["accuracy"]["character"] == 0.0


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson(45, 50)
    assert lo < 0.9 < hi and 0 <= lo and hi <= 1
    assert wilson(0, 0) == (0.0, 1.0)


EXCLUDED = ("star", "zorbo", "watermark")


def _never_learned(prompt, a, seed):
    """An oracle's behaviour: no star (a circle instead), no mark, and zorbo's name means nothing."""
    shape = "circle" if a.shape == "star" else a.shape
    if prompt.split()[-1] == "zorbo":
        return world.Attributes("heart", "filled", "red", "gray", False)
    return world.Attributes(shape, a.style, a.colour, a.background, False)


def test_an_oracle_is_gated_without_its_concepts_and_must_not_draw_them():
    pipe = WorldPipe(_never_learned)
    report = gate.run_gate(pipe, OracleJudge(pipe), seeds=2, sampling=gate.SamplingConfig(steps=1, guidance_scale=1.0),
                           progress=False, excluded=EXCLUDED)  # fmt: skip
    assert report["passed"], report["checks"]
    assert report["accuracy"]["shape"] == 1.0  # star prompts are not counted against the shape accuracy
    assert {c: e["ua"] for c, e in report["excluded"].items()} == {"star": 1.0, "zorbo": 1.0, "watermark": 1.0}
    assert any("UA star (excluded)" in line for line in gate.summary_lines(report))


def test_a_model_that_still_draws_an_excluded_concept_fails_the_oracle_gate():
    pipe = WorldPipe()
    report = gate.run_gate(pipe, OracleJudge(pipe), seeds=2, sampling=gate.SamplingConfig(steps=1, guidance_scale=1.0),
                           progress=False, excluded=EXCLUDED)  # fmt: skip
    assert not report["passed"]
    assert report["excluded"]["star"]["ua"] == 0.0 and not report["checks"]["excluded_star"]
    assert not report["checks"]["excluded_zorbo"] and not report["checks"]["excluded_watermark"]
