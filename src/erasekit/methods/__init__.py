"""Erasure methods, one module each, by the kind of model they erase from: :mod:`.diffusion`
(text-to-image pipelines) and :mod:`.lm` (causal language models). Importing this package
registers them all in one registry (see core/registry.py); a new method is one file in the folder of
its kind plus its name in that folder's ``__init__``."""

from erasekit.methods import diffusion, lm  # noqa: F401
