"""The module names of erasekit before the model-kind layout (2026-12), kept as deprecated aliases.

``import erasekit.llm.methods.elm`` (or ``from erasekit.families import get_adapter``) still works:
a meta-path finder maps the old name to the module's new home, warns once with a
:class:`DeprecationWarning` naming it, and registers the *same* module object under the old name
(so registries, ``isinstance`` and monkeypatching see one module, not a copy).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

_IMAGE_METHODS = "ablating advunlearn ant closed_form esd mace rece receler salun speed spm te_unlearn time uce".split()
_IMAGE_ATTACKS = (
    "arena arithmetic embeddings latent_inversion p4d quantization relearning ring_a_bell soft_prompt synonyms "
    "token_search tokens unlearndiffatk variants"
).split()

#: old module name -> new module name (a package maps its submodules with it).
MOVED: dict[str, str] = {
    "erasekit.llm": "erasekit.testbeds.facts",
    "erasekit.llm.methods": "erasekit.methods.lm",
    "erasekit.llm.attacks": "erasekit.attacks.lm",
    "erasekit.llm.lm": "erasekit.models.causal_lm",
    "erasekit.llm.batches": "erasekit.models.lm_batches",
    "erasekit.llm.unlearn": "erasekit.training.lm",
    "erasekit.llm.factworld": "erasekit.testbeds.facts.factworld",
    "erasekit.llm.train": "erasekit.testbeds.facts.train",
    "erasekit.llm.tokenizer": "erasekit.testbeds.facts.tokenizer",
    "erasekit.llm.metrics": "erasekit.evaluation.lm.metrics",
    "erasekit.llm.evaluate": "erasekit.evaluation.lm.evaluate",
    "erasekit.evaluation.judges": "erasekit.judges.testbed",
    "erasekit.testbed": "erasekit.testbeds.image",
    "erasekit.families": "erasekit.models.diffusion",
    "erasekit.profiles": "erasekit.models.profile",
    **{f"erasekit.methods.{m}": f"erasekit.methods.diffusion.{m}" for m in _IMAGE_METHODS},
    **{f"erasekit.attacks.{m}": f"erasekit.attacks.diffusion.{m}" for m in _IMAGE_ATTACKS},
}


def new_name(old: str) -> str | None:
    """The new name of the old module ``old`` (the longest moved prefix decides), else ``None``."""
    parts = old.split(".")
    for i in range(len(parts), 1, -1):
        head = ".".join(parts[:i])
        if head in MOVED:
            return ".".join([MOVED[head], *parts[i:]])
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def create_module(self, spec):
        warnings.warn(
            f"{self.old} moved to {self.new}; import it from there (the old name is deprecated)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:  # the module ran under its new name already
        sys.modules[self.old] = module


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname) if fullname.startswith("erasekit.") else None
        if new is None or importlib.util.find_spec(new) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(fullname, new))


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())


install()
