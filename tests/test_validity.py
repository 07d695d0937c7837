"""The validity benchmark's pieces: rank correlations against hand-worked values, the one settings rule,
the UnlearnCanvas-style grid metrics and the agreement with a published table."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from erasekit.core.io import read_json
from erasekit.core.stats import average_ranks, kendall_tau, spearman_rho
from erasekit.testbeds.image import world

ROOT = Path(__file__).resolve().parent.parent


def _validity():
    spec = importlib.util.spec_from_file_location("validity", ROOT / "benchmarks" / "validity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kendall_and_spearman_match_hand_worked_values():
    # x = 1..5, y = 3 1 2 5 4: 7 concordant and 3 discordant pairs -> tau = 0.4; sum d^2 = 8 -> rho = 1 - 48/120
    assert kendall_tau([1, 2, 3, 4, 5], [3, 1, 2, 5, 4]) == pytest.approx(0.4)
    assert spearman_rho([1, 2, 3, 4, 5], [3, 1, 2, 5, 4]) == pytest.approx(0.6)
    # ties (tau-b): C = 4, D = 0, 5 pairs untied in x, 5 untied in y -> 4 / 5; rho on average ranks -> 3.75 / 4.5
    assert kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)
    assert spearman_rho([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(3.75 / 4.5)
    assert list(average_ranks([3, 1, 3, 2])) == [3.5, 1.0, 3.5, 2.0]
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 1, 1], [1, 2, 3]) is None and spearman_rho([2, 2], [1, 2]) is None
    with pytest.raises(ValueError, match="equal lengths"):
        kendall_tau([1, 2], [1, 2, 3])


def test_settings_follow_one_rule_for_every_method():
    v = _validity()
    esd = v.scaled_settings("esd")  # reference: 200 iterations at 5e-5 (the diffusers script)
    assert esd == {"lr": 5e-4, "iterations": 20, "ddim_steps": 20}
    assert v.scaled_settings("spm")["iterations"] == 300 and v.scaled_settings("spm")["lr"] == pytest.approx(1e-3)
    assert v.scaled_settings("uce") == {"variant": "2023"}  # closed form: only the variant the table ran


def _judged(style_pred, shape_pred, seeds=1):
    cells = v_grid = _validity().grid()
    assert len(v_grid) == len(world.STYLES) * len(world.SHAPES)
    return {
        "style": np.asarray(style_pred),
        "shape": np.asarray(shape_pred),
        "style_true": np.array([world.STYLES.index(st) for _, st, _ in cells for _ in range(seeds)]),
        "shape_true": np.array([world.SHAPES.index(sh) for sh, _, _ in cells for _ in range(seeds)]),
    }


def test_grid_metrics_count_what_unlearncanvas_counts():
    v = _validity()
    base = _judged([world.STYLES.index(st) for _, st, _ in v.grid()], [world.SHAPES.index(sh) for sh, _, _ in v.grid()])
    perfect = v.grid_metrics(base, "striped", "style")
    assert perfect == {"UA": 0.0, "IRA": 100.0, "CRA": 100.0}
    # erase striped: its 8 prompts now draw "filled"; one other-style prompt loses its shape
    style, shape = base["style"].copy(), base["shape"].copy()
    target = base["style_true"] == world.STYLES.index("striped")
    style[target] = world.STYLES.index("filled")
    other = np.flatnonzero(~target)[0]
    shape[other] = (shape[other] + 1) % len(world.SHAPES)
    m = v.grid_metrics({**base, "style": style, "shape": shape}, "striped", "style")
    assert m["UA"] == 100.0 and m["IRA"] == 100.0
    assert m["CRA"] == pytest.approx(100 * 23 / 24)


def test_agreement_ranks_methods_and_flips_lower_is_better_metrics():
    v = _validity()
    table = {
        "rows": {"a": {"ua": 90.0, "clip": 20.0}, "b": {"ua": 60.0, "clip": 28.0}, "c": {"ua": 80.0, "clip": 22.0}},
        "testbed_metrics": {"ua": "style_UA", "clip": "-style_UA"},
    }
    ours = {"a": {"style_UA": 99.0}, "b": {"style_UA": 10.0}, "c": {"style_UA": 50.0}}
    out = v.agreement(ours, table)
    assert out["ua"]["kendall_tau"] == 1.0 and out["ua"]["difference_points"]["b"] == -50.0
    assert out["clip"]["kendall_tau"] == 1.0  # a lower CLIP score of the erased concept = a higher UA
    ours["b"]["style_UA"] = 100.0
    assert v.agreement(ours, table)["ua"]["kendall_tau"] == round(-1 / 3, 3)  # (1 concordant - 2 discordant) / 3


def test_published_tables_hold_the_issue_numbers_and_map_to_testbed_metrics():
    tables = {t["id"]: t for t in read_json(ROOT / "benchmarks" / "published_tables.json")["tables"]}
    uc = tables["unlearncanvas-style-object"]
    assert uc["rows"]["esd"]["style_UA"] == 98.58 and uc["rows"]["ablating"]["object_UA"] == 46.67
    compared = [t for t in tables.values() if "testbed_metrics" in t]
    assert compared and all(len(t["rows"]) >= 4 for t in compared)


def test_methods_run_on_the_domains_their_tables_measure():
    v = _validity()
    needed = v.needed_domains(read_json(ROOT / "benchmarks" / "published_tables.json"))
    assert needed["esd"] == {"style", "shape"} and needed["mace"] == {"style"} and needed["ant"] == {"style"}
