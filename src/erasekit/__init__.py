"""erasekit: erase concepts from generative models and prove that they stay removed."""

__version__ = "0.1.0"

from .api import check_testbed, generate_grid, load_judge, run_demo  # noqa: E402
from .generation import SamplingConfig, generate  # noqa: E402
from .models import load_pipeline, resolve_model, testbed_dir  # noqa: E402

__all__ = [
    "__version__",
    "SamplingConfig",
    "check_testbed",
    "generate",
    "generate_grid",
    "load_judge",
    "load_pipeline",
    "resolve_model",
    "run_demo",
    "testbed_dir",
]
