import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
import torch

# two threads on the 2-core CI machine; OMP_NUM_THREADS, when set, wins (sharing the cores with a training job)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``testbed`` (``testbed_llm``) need the shipped testbed (fact-world model) weights;
    without them they skip, saying why."""
    from erasekit.models import testbed_dir

    for marker, present, how in (
        ("testbed", (testbed_dir() / "model_index.json").is_file(), "erasekit testbed train --out <dir>"),
        ("testbed_llm", (testbed_dir("llm") / "config.json").is_file(), "erasekit testbed train --llm --out <dir>"),
    ):
        if present:
            continue
        skip = pytest.mark.skip(reason=f"no shipped {marker} weights (train them: {how})")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def testbed_pipe():
    from erasekit.models import load_pipeline

    return load_pipeline("testbed", device="cpu")


@pytest.fixture(scope="session")
def judge():
    from erasekit.api import load_judge

    return load_judge("testbed")


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory):
    """A tiny random GPT-2 with the fact-world tokenizer, saved (forget splits resolve through its testbed.json)."""
    from erasekit.testing import tiny_lm

    directory = tmp_path_factory.mktemp("lm") / "m"
    tiny_lm("gpt2", directory=directory)
    return directory
