"""Which command-line option applies to which kind of model: the table that makes sure no option is
ever accepted and silently ignored.

Every option of every ``erasekit`` command is declared here with the model kinds it applies to
(``diffusion``: image pipelines; ``causal-lm``: language models). A command resolves the kind of its
model first (from the name alone, before anything loads) and calls :func:`refuse_inapplicable`: an
option the user gave that does not apply to that kind is a one-line error (exit 2) naming the option
and what it applies to. ``tests/test_option_matrix.py`` enumerates every command x option x kind and
asserts each declared option either reaches the job or is refused, and that no option is undeclared.
"""

from __future__ import annotations

from erasekit.core.errors import InvalidInputError
from erasekit.models.load import CAUSAL_LM, DIFFUSION, KIND_WORDS, model_kind, other_kind  # noqa: F401  (the CLI resolves kinds here)

IMAGE: frozenset[str] = frozenset({DIFFUSION})
LM: frozenset[str] = frozenset({CAUSAL_LM})
BOTH: frozenset[str] = IMAGE | LM
#: The options that select the kind (``--llm``): they apply by definition.
SELECTORS = {("demo", "llm"), ("testbed check", "llm"), ("testbed train", "llm")}


#: command path (as typed after ``erasekit``) -> option parameter name -> kinds it applies to.
SCOPES: dict[str, dict[str, frozenset[str]]] = {
    "generate": {
        "prompt": IMAGE, "out": IMAGE, "model": IMAGE, "n": IMAGE, "seed": IMAGE, "steps": IMAGE, "guidance": IMAGE,
        "negative_prompt": IMAGE, "labels": IMAGE, "erasure": IMAGE, "guard": IMAGE, "device": IMAGE, "dtype": IMAGE,
    },
    "demo": {"out": BOTH, "seeds": IMAGE, "llm": BOTH, "device": BOTH, "dtype": BOTH},
    "erase": {
        "out": BOTH, "model": BOTH, "method": BOTH, "concept": IMAGE, "anchor": IMAGE, "preserve": IMAGE, "trigger": IMAGE,
        "request": IMAGE, "set_": BOTH, "lora_rank": BOTH, "checkpoints": BOTH, "resume": BOTH, "stop_at_ua": IMAGE,
        "min_ira": IMAGE, "forget": LM, "retain": LM, "device": BOTH, "dtype": BOTH,
    },
    "export": {"erasure": BOTH, "out": BOTH, "model": BOTH, "force": BOTH, "device": BOTH, "dtype": BOTH},
    "evaluate": {
        "out": BOTH, "model": BOTH, "erasure": BOTH, "guard": BOTH, "concept": IMAGE, "seeds": IMAGE, "contexts": IMAGE, "steps": IMAGE,
        "guidance": IMAGE, "split": LM, "oracle": LM, "judge": IMAGE, "prompts": IMAGE, "retain_prompts": IMAGE,
        "limit": IMAGE, "where": IMAGE, "samples": IMAGE, "fidelity": IMAGE, "cache": IMAGE, "batch_size": IMAGE, "device": BOTH,
        "dtype": BOTH,
    },
    "bench": {
        "methods_": BOTH, "concepts": BOTH, "out": BOTH, "report": BOTH, "model": BOTH, "seeds": IMAGE, "contexts": IMAGE,
        "set_": BOTH, "attacks_": BOTH, "robustness": BOTH, "judge": IMAGE, "prompts": IMAGE, "retain_prompts": IMAGE,
        "limit": IMAGE, "where": IMAGE, "samples": IMAGE, "resume": IMAGE, "backend": IMAGE, "address": IMAGE, "device": IMAGE,
        "dtype": IMAGE,
    },
    "attack": {
        "concept": BOTH, "attack_": BOTH, "out": BOTH, "model": BOTH, "erasure": BOTH, "guard": BOTH, "budget": BOTH, "seeds": IMAGE,
        "prompt": IMAGE, "reference": IMAGE, "replay": IMAGE, "grid": IMAGE, "set_": BOTH, "steps": IMAGE, "guidance": IMAGE,
        "judge": IMAGE, "prompt_file": IMAGE, "limit": IMAGE, "where": IMAGE, "cache": IMAGE, "batch_size": IMAGE, "device": BOTH,
        "dtype": BOTH,
    },
    "methods": {},
    "attacks": {},
    "judges": {},
    "report": {"results": BOTH, "out": BOTH, "title": BOTH},
    "testbed path": {},
    "testbed check": {
        "out": BOTH, "model": BOTH, "seeds": IMAGE, "steps": IMAGE, "guidance": IMAGE, "classifier": IMAGE, "llm": BOTH,
        "device": BOTH, "dtype": BOTH,
    },
    "testbed train": {
        "workdir": BOTH, "out": BOTH, "resume": BOTH, "smoke": BOTH, "unet_steps": IMAGE, "exclude": BOTH,
        "retrain_codec": IMAGE, "codec": IMAGE, "llm": BOTH, "epochs": LM, "text_encoder": IMAGE, "padding": IMAGE,
        "token_loss": IMAGE,
    },
}  # fmt: skip


def flag(param) -> str:
    """The option as the user types it (its longest spelling: ``--num-images`` over ``-n``)."""
    return max(getattr(param, "opts", None) or [param.name], key=len)


def given_options(ctx) -> list:
    """The parameters of ``ctx``'s command that the user set (on the command line or through the
    environment), as click parameter objects; defaults are not 'given'."""
    try:
        from typer._click.core import ParameterSource  # typer >= 0.2x carries its own click
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click.core import ParameterSource

    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return [p for p in ctx.command.params if ctx.get_parameter_source(p.name) in given]


def given_names(ctx) -> set[str]:
    """The names of the parameters of ``ctx``'s command that the user set (:func:`given_options`)."""
    return {p.name for p in given_options(ctx)}


def command_name(ctx) -> str:
    """``ctx``'s command as typed after the program (``testbed train``), whatever the program was called
    (``erasekit``, ``python -m erasekit``): the names of the contexts below the root."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(reversed(names))


def refuse_inapplicable(ctx, kind: str, subject: str) -> None:
    """Raise a one-line :class:`InvalidInputError` when the user gave an option of ``ctx``'s command
    that does not apply to ``kind``; ``subject`` names the model in the message. Every option must be
    declared in :data:`SCOPES` (an undeclared one is a programming error)."""
    command = command_name(ctx)
    scope = SCOPES[command]
    if scope and not any(kind in kinds for kinds in scope.values()):
        raise InvalidInputError(
            f"'erasekit {command}' is for {KIND_WORDS[other_kind(kind)][0]}; {subject} is {KIND_WORDS[kind][1]}"
        )
    for param in given_options(ctx):
        kinds = scope[param.name]
        if kind not in kinds:
            raise InvalidInputError(
                f"{flag(param)} applies to {KIND_WORDS[other_kind(kind)][0]} only; {subject} is {KIND_WORDS[kind][1]} "
                f"(drop {flag(param)})"
            )
