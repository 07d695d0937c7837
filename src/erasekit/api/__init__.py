"""The Python API behind the CLI commands (same names, same arguments), one function per job that
takes either kind of model and dispatches on it (the only layer that sees both kinds):

- :mod:`.erasing`: :func:`erase` (pipeline in, :class:`~erasekit.core.erasure.Erasure` out) and
  :func:`erase_to` (what ``erasekit erase`` does, pipelines and language models);
- :mod:`.commands`: the commands that take paths (:func:`generate_grid`, :func:`check_testbed`,
  :func:`export_pipeline`, :func:`evaluate`, :func:`train_testbed`);
- :mod:`.attacking`: :func:`~.attacking.attack`; :mod:`.demo`: :func:`run_demo`; :mod:`.bench`: :func:`bench`;
- :mod:`.unlearning` and :mod:`.bench_llm`: the language-model side of those jobs (``unlearn``,
  ``evaluate_lm``, ``attack_lm``, ``export_lm``, ``check_lm_testbed``, ``bench_llm``), which the jobs
  above call for a language model;
- :mod:`.judges`: :func:`load_judge` and captions.

An argument that does not apply to the model's kind is refused with one line
(:func:`erasekit.models.refuse_options`), never ignored.
"""

from erasekit.api.bench import bench
from erasekit.api.commands import check_testbed, evaluate, export_pipeline, generate_grid, model_inputs, train_testbed
from erasekit.api.demo import DEMO_ERASURES, DEMO_PROMPTS, run_demo
from erasekit.api.erasing import check_request_text, erase
from erasekit.api.judges import describe_labels, load_judge
from erasekit.models import load_pipeline

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
    "train_testbed",
]
