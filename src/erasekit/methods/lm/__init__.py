"""Language-model unlearning methods, one module each; importing this package registers them
(family ``causal-lm``) in the same registry as the image methods (``erasekit methods``)."""

from erasekit.methods.lm import elm, ga, graddiff, idk, leace, npo, refusal, rmu, simnpo, task_vector, undial  # noqa: F401
