"""erasekit: erase concepts from generative models and prove that they stay removed."""

__version__ = "0.1.0"

from .api import check_testbed, generate_grid, load_judge, run_demo
from .generation import SamplingConfig, generate
from .models import load_pipeline, resolve_model, testbed_dir

__all__ = [
    "SamplingConfig",
    "__version__",
    "check_testbed",
    "generate",
    "generate_grid",
    "load_judge",
    "load_pipeline",
    "resolve_model",
    "run_demo",
    "testbed_dir",
]
