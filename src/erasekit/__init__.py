"""erasekit: erase concepts from generative models and prove that they stay removed.

import erasekit

pipe = erasekit.load_pipeline("testbed")
erasure = erasekit.erase(pipe, "uce", {"targets": ["star"]})     # pipe is unchanged
erasure.save("erasures/star")
report = erasekit.evaluate(pipe, erasekit.Erasure.load("erasures/star"), seeds=2, contexts=6)
with erasure.applied(pipe):                                      # restored on leaving the block
    images = erasekit.generate(pipe, ["a red star"], seeds=[0])
result = erasekit.attack(pipe, erasure, attack="synonyms", concept="star")   # does it come back?
print(result.asr, result.asr_ci, result.curve)
"""

__version__ = "0.1.0"

from erasekit import (  # noqa: F401  (register the built-in attacks and methods of both kinds)
    _moved,  # noqa: F401  (first: the module names before the model-kind layout still import, deprecated)
    attacks,
    judges,
    methods,
)
from erasekit.api import bench, check_testbed, erase, evaluate, export_pipeline, generate_grid, load_judge, run_demo
from erasekit.api.attacking import attack
from erasekit.api.erasing import erase_to
from erasekit.api.unlearning import forget_request, unlearn
from erasekit.attacks.base import AttackResult
from erasekit.core.erasure import AppliedErasure, Erasure
from erasekit.core.errors import ErasekitError
from erasekit.core.registry import (
    all_attacks,
    all_judges,
    all_methods,
    get_attack,
    get_judge,
    get_method,
    register_attack,
    register_judge,
    register_method,
)
from erasekit.core.request import ErasureRequest, ForgetRequest, QAPair, Target
from erasekit.generation import SamplingConfig, generate
from erasekit.models import load_model, load_pipeline, resolve_model, testbed_dir
from erasekit.models.causal_lm import LanguageModel, load_lm

__all__ = [
    "AppliedErasure",
    "AttackResult",
    "Erasure",
    "ErasekitError",
    "ErasureRequest",
    "ForgetRequest",
    "LanguageModel",
    "QAPair",
    "SamplingConfig",
    "Target",
    "__version__",
    "all_attacks",
    "all_judges",
    "all_methods",
    "attack",
    "bench",
    "check_testbed",
    "erase",
    "erase_to",
    "evaluate",
    "export_pipeline",
    "forget_request",
    "generate",
    "generate_grid",
    "get_attack",
    "get_judge",
    "get_method",
    "load_judge",
    "load_lm",
    "load_model",
    "load_pipeline",
    "register_attack",
    "register_judge",
    "register_method",
    "resolve_model",
    "run_demo",
    "testbed_dir",
    "unlearn",
]
