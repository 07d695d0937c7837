import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def testbed_pipe():
    from erasekit.models import load_pipeline

    return load_pipeline("testbed", device="cpu")


@pytest.fixture(scope="session")
def judge():
    from erasekit.api import load_judge

    return load_judge("testbed")
