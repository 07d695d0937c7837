"""Inputs are checked where they enter, each a one-line error naming what is wrong: control characters
in concepts, empty or duplicate forget rows, text a tokenizer encodes to nothing, non-finite images,
outputs nested in other outputs, two runs on one output, and a resume with nothing to resume."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from erasekit import api
from erasekit.api.unlearning import read_pairs, unlearn
from erasekit.cli import app
from erasekit.core.errors import ConfigError, NonFiniteError, OutputPathError
from erasekit.core.outputs import check_dir_output, check_file_output, hold_outputs, write_manifest
from erasekit.core.request import ErasureRequest, ForgetRequest, QAPair
from erasekit.generation import SamplingConfig, generate
from erasekit.testing import tiny_lm, tiny_pipeline

runner = CliRunner()


@pytest.mark.parametrize("bad", ["star\nzorbo", "star\tzorbo", "star\x1b[31m"])
def test_a_concept_with_a_control_character_is_refused(bad):
    with pytest.raises(ConfigError, match="control character"):
        ErasureRequest.from_dict({"targets": [bad]})
    with pytest.raises(ConfigError, match="control character"):
        ErasureRequest.from_dict({"targets": ["star"], "preserve": [bad]})
    with pytest.raises(ConfigError, match="control character"):
        ErasureRequest.from_dict({"targets": [{"concept": "star", "anchor": bad}]})
    ErasureRequest.from_dict({"targets": ["a star, striped"]})  # punctuation and spaces are fine


def test_forget_files_with_empty_or_duplicate_rows_name_the_file_and_row(tmp_path):
    path = tmp_path / "forget.json"
    rows = [{"question": "Who wrote X?", "answer": "Ann"}, {"question": "Where was Ann born?", "answer": "  "}]
    path.write_text(json.dumps(rows))
    with pytest.raises(ConfigError, match=r"forget.json: entry 2 has an empty answer"):
        read_pairs(path, "forget")
    rows[1] = {"question": "Who wrote X? ", "answer": "Bo"}
    path.write_text(json.dumps(rows))
    with pytest.raises(ConfigError, match=r"entry 2 repeats the question of entry 1"):
        read_pairs(path, "forget")
    rows[1] = {"question": "Where was Ann born?", "answer": "Oslo"}
    path.write_text(json.dumps(rows))
    assert [p.answer for p in read_pairs(path, "forget")] == ["Ann", "Oslo"]


class _EmptyTokenizer:
    """A tokenizer with an empty vocabulary: every text encodes to no token."""

    def __call__(self, texts, add_special_tokens=False):
        class Encoded:
            input_ids = [[] for _ in texts]

        return Encoded()


def test_text_a_tokenizer_encodes_to_nothing_is_refused_before_the_loop():
    lm = tiny_lm("gpt2")
    lm.tokenizer = _EmptyTokenizer()
    request = ForgetRequest("mine", [QAPair("Who wrote X?", "Ann")], [])
    with pytest.raises(ConfigError, match="entry 1's question 'Who wrote X\\?' encodes to no token"):
        unlearn(lm, "ga", request, progress=False, steps=1)


def test_non_finite_images_are_an_error_not_a_grid():
    pipe = tiny_pipeline("sd")
    with pytest.raises(NonFiniteError, match="NaN or infinite pixels"):
        generate(pipe, ["a cat"], [0], SamplingConfig(steps=2, guidance_scale=1e30), progress=False)
    images = generate(pipe, ["a cat"], [0], SamplingConfig(steps=2, guidance_scale=2.0), progress=False)
    assert images.dtype == np.uint8 and images.shape[0] == 1


def test_an_output_inside_or_around_another_erasekit_output_is_refused(tmp_path):
    erasure = tmp_path / "E"
    erasure.mkdir()
    (erasure / "erasure.json").write_text("{}")
    write_manifest(erasure, "erasure", files=True)
    with pytest.raises(OutputPathError, match="lies inside the erasekit erasure output"):
        check_dir_output(erasure / "inner", "erasure")
    with pytest.raises(OutputPathError, match="lies inside the erasekit erasure output"):
        check_file_output(erasure / "report.json", "evaluation", (".json",))
    # an erasure written inside E before this check existed: replacing E would delete it
    inner = erasure / "inner"
    inner.mkdir()
    (inner / "erasure.json").write_text("{}")
    write_manifest(inner, "erasure", files=True)
    with pytest.raises(OutputPathError, match=r"holds another erasekit output \(inner\)"):
        check_dir_output(erasure, "erasure")
    # collections (a bench, a demo) may hold erasures
    demo = tmp_path / "demo"
    demo.mkdir()
    write_manifest(demo, "demo", files=False)
    assert check_dir_output(demo / "uce", "erasure") == demo / "uce"


def test_a_second_run_on_the_same_output_refuses_at_start(tmp_path):
    out = tmp_path / "E"
    entered = threading.Event()
    release = threading.Event()
    errors: list[Exception] = []

    def first():
        with hold_outputs(out, None):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(10)
    try:
        with pytest.raises(OutputPathError, match="another erasekit run is writing"):
            with hold_outputs(out):
                errors.append(AssertionError("the second run got the lock"))
    finally:
        release.set()
        thread.join()
    assert not errors
    with hold_outputs(out):  # released once the first run ends, and its lock file is gone afterwards
        pass
    assert [p.name for p in tmp_path.iterdir()] == []


def test_resume_with_no_checkpoint_is_an_error_not_a_fresh_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipe = tiny_pipeline("sd")
    with pytest.raises(ConfigError, match="no checkpoint in .* to continue from"):
        api.erase(pipe, "esd", "cat", progress=False, checkpoint_dir=tmp_path / "ck", resume=True, iterations=2, ddim_steps=2)
    assert not (tmp_path / "ck").exists()


def test_replay_refuses_the_search_options_it_would_ignore(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.json").write_text("{}")
    r = runner.invoke(app, ["attack", "--replay", "a.json", "--budget", "5"])
    assert r.exit_code == 2 and "--budget does not apply" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_generated_docs_name_paths_relative_to_the_repository(tmp_path, monkeypatch):
    from erasekit.core.outputs import shown_path

    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "benchmarks" / "results" / "testbed") == "benchmarks/results/testbed"
    assert shown_path("benchmarks/results/llm") == "benchmarks/results/llm"
    assert shown_path(tmp_path.parent / "elsewhere") == str(tmp_path.parent / "elsewhere")
