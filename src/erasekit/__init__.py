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

from . import attacks, methods  # noqa: F401  (register the built-in attacks and methods; core/ imports nothing above it)
from .api import bench, check_testbed, erase, evaluate, export_pipeline, generate_grid, load_judge, run_demo
from .api.attacking import attack
from .api.erasing import erase_to
from .api.unlearning import forget_request, unlearn
from .attacks.base import AttackResult
from .core.erasure import AppliedErasure, Erasure
from .core.errors import ErasekitError
from .core.registry import all_attacks, all_methods, get_attack, get_method, register_attack, register_method
from .core.request import ErasureRequest, ForgetRequest, QAPair, Target
from .generation import SamplingConfig, generate
from .llm import attacks as _llm_attacks  # noqa: F401  (the language-model attacks)
from .llm import methods as _llm_methods  # noqa: F401  (the language-model unlearning methods)
from .llm.lm import LanguageModel, load_lm
from .models import load_pipeline, resolve_model, testbed_dir

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
    "get_method",
    "load_judge",
    "load_lm",
    "load_pipeline",
    "register_attack",
    "register_method",
    "resolve_model",
    "run_demo",
    "testbed_dir",
    "unlearn",
]
