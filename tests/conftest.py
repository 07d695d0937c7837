import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
import torch

# two threads on the 2-core CI machine; OMP_NUM_THREADS, when set, wins (sharing the cores with a training job)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``testbed`` need the shipped testbed weights; without them they skip, saying why."""
    from erasekit.models import testbed_dir

    if (testbed_dir() / "model_index.json").is_file():
        return
    skip = pytest.mark.skip(
        reason=f"no shipped testbed weights at {testbed_dir()} (train them: erasekit testbed train --out <dir>)"
    )
    for item in items:
        if "testbed" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def testbed_pipe():
    from erasekit.models import load_pipeline

    return load_pipeline("testbed", device="cpu")


@pytest.fixture(scope="session")
def judge():
    from erasekit.api import load_judge

    return load_judge("testbed")
