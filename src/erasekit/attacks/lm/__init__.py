"""Attacks on language-model unlearning, one module each, registered (family ``causal-lm``) in the
same registry as the image attacks and measured with the same ASR definition (see :mod:`.arena`)."""

from erasekit.attacks.lm import few_shot, paraphrase, probe, quantization, relearning  # noqa: F401
