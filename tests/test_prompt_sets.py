"""Prompt sets the user brings: every schema (I2P, case-number CSVs, MMA-Diffusion, text, YAML),
per-row seeds and guidance, --where and --limit, and each bad file as a one-line error."""

from __future__ import annotations

import pytest

from erasekit.core.errors import ConfigError, MissingFileError
from erasekit.evaluation.prompt_sets import read_prompt_set

I2P = """prompt,categories,hard,inappropriate_percentage,nudity_percentage,overlay,lexica_url,sd_safety_percentage,prompt_toxicity,evaluation_seed,evaluation_guidance,sd_image_width,sd_image_height,sd_model,case_number
"a woman on a beach, oil painting","sexual,shocking",1,80.0,60.0,,,10,0.3,2734342,7.0,512,512,stable-diffusion-1.4,0
"a ruined city at night",violence,0,20.0,0.0,,,0,0.1,123,7.5,512,768,stable-diffusion-1.4,1
"""


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_i2p_rows_keep_their_seed_guidance_size_and_categories(tmp_path):
    rows = read_prompt_set(write(tmp_path, "i2p.csv", I2P))
    assert [r.prompt for r in rows] == ["a woman on a beach, oil painting", "a ruined city at night"]
    first, second = rows
    assert (first.seed, first.guidance, first.width, first.height, first.case) == (2734342, 7.0, 512, 512, "0")
    assert first.categories == ("sexual", "shocking") and second.height == 768
    sexual = read_prompt_set(tmp_path / "i2p.csv", where="categories=sexual")
    assert [r.case for r in sexual] == ["0"]
    assert len(read_prompt_set(tmp_path / "i2p.csv", limit=1)) == 1
    assert read_prompt_set(tmp_path / "i2p.csv", where=["categories=sexual", "hard=1"])[0].case == "0"


def test_case_number_mma_text_and_yaml_schemas(tmp_path):
    style = read_prompt_set(
        write(tmp_path, "vangogh.csv", "case_number,prompt,evaluation_seed,artist\n3,a starry night,42,Van Gogh\n")
    )
    assert (style[0].case, style[0].seed, style[0].columns["artist"]) == ("3", 42, "Van Gogh")
    mma = read_prompt_set(write(tmp_path, "mma.csv", "adv_prompt,clean_prompt\nxq zz figure,a nude figure\n"))
    assert mma[0].prompt == "xq zz figure" and mma[0].columns["clean_prompt"] == "a nude figure"
    text = read_prompt_set(write(tmp_path, "p.txt", "a cat\n\n  a dog  \n"))
    assert [r.prompt for r in text] == ["a cat", "a dog"] and text[0].seed is None
    yaml_rows = read_prompt_set(write(tmp_path, "p.yaml", "- a cat\n- prompt: a dog\n  seed: 7\n  guidance: 5\n"))
    assert [(r.prompt, r.seed, r.guidance) for r in yaml_rows] == [("a cat", None, None), ("a dog", 7, 5.0)]
    assert read_prompt_set(write(tmp_path, "q.yml", "prompts: [a star]\n"))[0].prompt == "a star"
    assert read_prompt_set(write(tmp_path, "bom.csv", "\ufeffprompt\na fox\n"))[0].prompt == "a fox"


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("none.csv", "case_number,caption_id\n1,2\n", "no prompt column"),
        ("empty.csv", "prompt\n", "holds no prompt"),
        ("blank.csv", 'prompt\n""\n', "row 2 has an empty prompt"),
        ("seed.csv", "prompt,evaluation_seed\na cat,soon\n", "row 2: evaluation_seed 'soon' is not a number"),
        ("neg.csv", "prompt,evaluation_seed\na cat,-3\n", "seed -3 is negative"),
        ("g.csv", "prompt,evaluation_guidance\na cat,inf\n", "guidance inf must be a finite"),
        ("ctl.txt", "a cat\x1b[31m\n", "control character"),
        ("bad.yaml", "- a cat\n- {seed: 3}\n", "entry 2 needs a non-empty prompt"),
        ("map.yaml", "prompt: a cat\n", "must hold a list"),
        ("p.json", "[]", "prompt files are .csv"),
    ],
)
def test_bad_prompt_files_are_one_line_errors(tmp_path, name, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        read_prompt_set(write(tmp_path, name, text))
    assert "\n" not in str(err.value)


def test_unreadable_missing_and_filtered_away(tmp_path):
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_prompt_set(write(tmp_path, "latin.csv", "prompt\nun caf\u00e9\n", encoding="latin-1"))
    with pytest.raises(MissingFileError, match="does not exist"):
        read_prompt_set(tmp_path / "nowhere.csv")
    path = write(tmp_path, "i2p.csv", I2P)
    with pytest.raises(ConfigError, match="holds no prompt where categories=harassment"):
        read_prompt_set(path, where="categories=harassment")
    with pytest.raises(ConfigError, match="has no column 'colour'"):
        read_prompt_set(path, where="colour=red")
    with pytest.raises(ConfigError, match="column=value"):
        read_prompt_set(path, where="sexual")
    with pytest.raises(ConfigError, match="--limit must be at least 1"):
        read_prompt_set(path, limit=0)
