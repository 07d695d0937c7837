"""The Python API behind the CLI commands (same names, same arguments), one module per job:

- :mod:`.erasing`: :func:`erase` (pipeline in, :class:`~erasekit.core.erasure.Erasure` out) and
  :func:`erase_to` (what ``erasekit erase`` does);
- :mod:`.commands`: the commands that take paths (:func:`generate_grid`, :func:`check_testbed`,
  :func:`export_pipeline`, :func:`evaluate`);
- :mod:`.demo`: :func:`run_demo`; :mod:`.bench`: :func:`bench`;
- :mod:`.judges`: :func:`load_judge` and captions.
"""

from ..models import load_pipeline
from .bench import bench
from .commands import check_testbed, evaluate, export_pipeline, generate_grid, model_inputs
from .demo import DEMO_ERASURES, DEMO_PROMPTS, run_demo
from .erasing import check_request_text, erase
from .judges import describe_labels, load_judge

__all__ = [
    "DEMO_ERASURES",
    "DEMO_PROMPTS",
    "bench",
    "check_request_text",
    "check_testbed",
    "describe_labels",
    "erase",
    "evaluate",
    "export_pipeline",
    "generate_grid",
    "load_judge",
    "load_pipeline",
    "model_inputs",
    "run_demo",
]
