"""erasekit: erase concepts from generative models and prove that they stay removed.

import erasekit

pipe = erasekit.load_pipeline("testbed")
erasure = erasekit.erase(pipe, "uce", {"targets": ["star"]})     # pipe is unchanged
erasure.save("erasures/star")
report = erasekit.evaluate(pipe, erasekit.Erasure.load("erasures/star"), seeds=2, contexts=6)
with erasure.applied(pipe):                                      # restored on leaving the block
    images = erasekit.generate(pipe, ["a red star"], seeds=[0])
"""

__version__ = "0.1.0"

from . import methods  # noqa: F401  (registers the built-in methods; core/ imports nothing above it)
from .api import bench, check_testbed, erase, evaluate, export_pipeline, generate_grid, load_judge, run_demo
from .api.erasing import erase_to
from .core.erasure import AppliedErasure, Erasure
from .core.errors import ErasekitError
from .core.registry import all_methods, get_method, register_method
from .core.request import ErasureRequest, Target
from .generation import SamplingConfig, generate
from .models import load_pipeline, resolve_model, testbed_dir

__all__ = [
    "AppliedErasure",
    "Erasure",
    "ErasekitError",
    "ErasureRequest",
    "SamplingConfig",
    "Target",
    "__version__",
    "all_methods",
    "bench",
    "check_testbed",
    "erase",
    "erase_to",
    "evaluate",
    "export_pipeline",
    "generate",
    "generate_grid",
    "get_method",
    "load_judge",
    "load_pipeline",
    "register_method",
    "resolve_model",
    "run_demo",
    "testbed_dir",
]
