"""Registries of named things: erasure methods, attacks and judges, on one ``kinds`` axis.

Every entry says which kinds of model it applies to (:data:`FAMILIES`: the diffusion families
``sd``, ``sdxl``, ``sd3``, ``flux`` and ``causal-lm``), and a job refuses an entry whose kinds do not
include its model's, never substituting another.

A method registers one line next to its implementation::

    @register_method("uce", UCEConfig, families=("sd", "sdxl", "sd3", "flux"), kind="closed-form")
    def uce(pipe, request, config, adapter, progress) -> MethodResult: ...

Its config is a :class:`~erasekit.core.config.MethodConfig` dataclass whose fields carry the paper's
defaults, a ``help`` string and bounds in their metadata; ``erasekit methods`` and ``--set key=value``
parsing are generated from it. A method that takes optional services declares them
(``accepts=("judge", "checkpoints", "monitor")``) and has the matching keyword parameters.

Registration flows one way: this module imports nothing above ``core``. The package boundary
(``erasekit/__init__.py``) imports ``erasekit.methods``, which registers the built-in methods, and
methods of other packages register through the ``erasekit.methods`` entry-point group (loaded on the
first look-up)::

    [project.entry-points."erasekit.methods"]
    mymethod = "mypackage.erasekit_methods"   # a module that calls register_method on import

Attacks register the same way (``register_attack``, entry-point group ``erasekit.attacks``); both
specs share :class:`ConfiguredSpec` (config building from CLI strings, the parameter table). Judges
register a factory (``register_judge``, entry-point group ``erasekit.judges``): ``factory(model,
**options) -> judge`` builds the judge for a model (a local weights directory among the options).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from erasekit.core.errors import ConfigError


@dataclass
class MethodResult:
    """What a method returns: new values of the tensors it changed, and anything worth recording."""

    weights: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)
    lora: dict[str, torch.Tensor] = field(default_factory=dict)  # diffusers-format LoRA factors (scale 1), if any
    attachment: Any = None  # an erasekit.core.attachments.Attachment, for methods that add modules


FAMILIES = ("sd", "sdxl", "sd3", "flux", "causal-lm")  # causal-lm: transformers language models (erasekit.models.causal_lm)
#: The diffusion families (the kinds an image attack or judge applies to).
DIFFUSION_FAMILIES = ("sd", "sdxl", "sd3", "flux")
KINDS = ("closed-form", "closed-form+lora", "fine-tuning", "adapter", "guard")
#: Optional services a method may take, and the keyword parameters each brings.
SERVICES = {"judge": ("judge",), "checkpoints": ("checkpoint_dir", "resume"), "monitor": ("monitor",), "profile": ("profile",)}


@dataclass
class ConfiguredSpec:
    """What every registered thing has: a name, a config dataclass and a one-line summary."""

    name: str
    config_cls: type
    summary: str

    what = "method"  # the word used in messages ("method", "attack")

    def make_config(self, params: dict[str, Any] | None = None):
        """Build the config from ``params`` (values may be strings from the CLI); unknown keys are errors."""
        params = dict(params or {})
        fields = {f.name: f for f in dataclasses.fields(self.config_cls)}
        unknown = set(params) - set(fields)
        if unknown:
            raise ConfigError(
                f"{self.what} {self.name!r} has no parameter {', '.join(sorted(unknown))}; its parameters: {', '.join(fields)}"
            )
        hints = typing.get_type_hints(self.config_cls)
        values = {k: coerce(v, hints[k], f"{self.name}.{k}") for k, v in params.items()}
        try:
            return self.config_cls(**values)  # MethodConfig checks numbers and cross-field rules on construction
        except ConfigError as e:
            raise ConfigError(f"{self.what} {self.name!r}: {e}") from None

    def parameters(self) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) of every config field."""
        hints = typing.get_type_hints(self.config_cls)
        out = []
        for f in dataclasses.fields(self.config_cls):
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            )  # type: ignore[misc]
            out.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
        return out


@dataclass
class MethodSpec(ConfiguredSpec):
    fn: Callable[..., MethodResult] = None  # type: ignore[assignment]
    families: tuple[str, ...] = ()
    kind: str = ""
    accepts: frozenset[str] = frozenset()

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of model the method erases from (the registry's one axis; ``families`` of old)."""
        return self.families

    @property
    def trains(self) -> bool:
        """Whether the method runs the training loop (and so writes checkpoints and can resume)."""
        return "checkpoints" in self.accepts


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, families: tuple[str, ...], kind: str, accepts: tuple[str, ...] = ()):
    """Decorator registering a method under ``name``; the summary is the docstring's first line.

    Refused (a programming error, raised at import): a duplicate name, an unknown family or kind, a
    config that is not a ``MethodConfig``, or ``accepts`` that does not match the function's keywords.
    """
    import inspect

    from erasekit.core.config import MethodConfig

    def deco(fn: Callable[..., MethodResult]) -> Callable[..., MethodResult]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        if not families or set(families) - set(FAMILIES):
            raise ValueError(f"method {name!r}: families must be among {FAMILIES}, got {families}")
        if kind not in KINDS:
            raise ValueError(f"method {name!r}: kind must be one of {KINDS}, got {kind!r}")
        if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig)):
            raise ValueError(f"method {name!r}: its config must be a MethodConfig dataclass")
        unknown = set(accepts) - set(SERVICES)
        if unknown:
            raise ValueError(f"method {name!r} accepts unknown services {sorted(unknown)}; known: {sorted(SERVICES)}")
        keywords = set(inspect.signature(fn).parameters)
        for service, params in SERVICES.items():
            if (service in accepts) != (set(params) <= keywords):
                raise ValueError(
                    f"method {name!r}: declare accepts={service!r} exactly when the function takes {', '.join(params)}"
                )
        summary = _summary(fn)
        METHODS[name] = MethodSpec(name, config_cls, summary, fn, tuple(families), kind, frozenset(accepts))
        return fn

    return deco


ATTACK_KINDS = ("prompt", "embedding", "weights", "latent", "probe")
#: What an attack attacks: diffusion pipelines, or causal language models (erasekit.attacks.lm).
ATTACK_FAMILIES = ("diffusion", "causal-lm")


@dataclass
class AttackSpec(ConfiguredSpec):
    """A registered attack: ``fn(arena, config, tracker, progress)`` (see :mod:`erasekit.attacks.base`).

    ``budget_unit`` names what ``config.budget`` counts (iterations, steps, candidates...); ``kind``
    says what the attack finds (a prompt, an embedding, weights or a latent); ``denoiser`` is False for
    attacks that only read the text encoder; ``fast`` marks the attacks the demo's short red team runs.
    """

    what = "attack"
    fn: Callable[..., Any] = None  # type: ignore[assignment]
    budget_unit: str = "iterations"
    kind: str = "prompt"
    denoiser: bool = True
    fast: bool = False
    family: str = "diffusion"
    #: Which trials it runs on: ``all`` of the arena's, or the ``held-out`` half (a language-model
    #: attack that teaches the model the other half, relearning).
    trials: str = "all"
    #: The diffusion families it applies to (:func:`register_attack`).
    families: tuple[str, ...] = DIFFUSION_FAMILIES

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of model the attack applies to (the registry's one axis)."""
        return self.families if self.family == "diffusion" else ("causal-lm",)

    @property
    def default_budget(self) -> int:
        return int(self.make_config().budget)

    @property
    def budget_max(self) -> int:
        """The largest budget the attack accepts (its number of options, for bounded attacks)."""
        field_ = next(f for f in dataclasses.fields(self.config_cls) if f.name == "budget")
        return int(field_.metadata.get("max", 1 << 30))


#: Attacks by family, then name: a name may exist once per family (``quantization`` of a diffusion
#: pipeline and of a language model are different procedures under the same name).
ATTACKS: dict[str, dict[str, AttackSpec]] = {f: {} for f in ATTACK_FAMILIES}


def register_attack(name: str, config_cls: type, budget_unit: str, kind: str, denoiser: bool = True, fast: bool = False,
                    family: str = "diffusion", trials: str = "all", families: tuple[str, ...] = DIFFUSION_FAMILIES):  # fmt: skip
    """Decorator registering an attack under ``name`` (summary: the docstring's first line). Every
    attack, of either family, is ``fn(arena, config, tracker, progress) -> info | None``: the job
    builds the arena and the tracker over its trials, the attack reports what it finds to the tracker.

    Refused at import: a duplicate name, an unknown kind, a config that is not a ``MethodConfig``
    with an integer ``budget`` field, ``trials`` other than ``all`` (or ``held-out`` for a
    language-model attack), ``families`` that are not diffusion families. ``families``: the pipeline
    families a diffusion attack applies to (an attack that edits the token embeddings needs a family
    whose text encoder erasekit can hook).
    """
    from erasekit.core.config import MethodConfig

    def deco(fn):
        if family not in ATTACK_FAMILIES:
            raise ValueError(f"attack {name!r}: family must be one of {ATTACK_FAMILIES}, got {family!r}")
        if name in ATTACKS[family]:
            raise ValueError(f"attack {name!r} is registered twice for {family} models")
        if kind not in ATTACK_KINDS:
            raise ValueError(f"attack {name!r}: kind must be one of {ATTACK_KINDS}, got {kind!r}")
        import inspect

        if list(inspect.signature(fn).parameters)[:4] != ["arena", "config", "tracker", "progress"]:
            raise ValueError(f"attack {name!r}: its function must be fn(arena, config, tracker, progress)")
        if trials not in (("all", "held-out") if family == "causal-lm" else ("all",)):
            raise ValueError(f"attack {name!r}: trials={trials!r} is not a choice for {family} attacks")
        if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig)):
            raise ValueError(f"attack {name!r}: its config must be a MethodConfig dataclass")
        if typing.get_type_hints(config_cls).get("budget") is not int:
            raise ValueError(f"attack {name!r}: its config needs an int field 'budget'")
        if not families or not set(families) <= set(DIFFUSION_FAMILIES):
            raise ValueError(f"attack {name!r}: families must be some of {DIFFUSION_FAMILIES}, got {families!r}")
        ATTACKS[family][name] = AttackSpec(name, config_cls, _summary(fn), fn, budget_unit, kind, denoiser, fast, family, trials,
                                           tuple(families))  # fmt: skip
        return fn

    return deco


@dataclass
class JudgeSpec:
    """A registered judge: ``factory(model, **options) -> judge`` for models of ``kinds``.

    ``judges`` says what it reads (``images`` or ``answers``); ``offline`` whether it runs with what
    erasekit ships (the testbed judges) or needs weights the user brings (``options`` names them).
    """

    name: str
    factory: Callable[..., Any]
    kinds: tuple[str, ...]
    judges: str
    summary: str
    options: tuple[str, ...] = ()
    offline: bool = True


JUDGES: dict[str, JudgeSpec] = {}


def register_judge(name: str, kinds: tuple[str, ...], judges: str, options: tuple[str, ...] = (), offline: bool = True):
    """Decorator registering a judge factory under ``name`` (summary: the docstring's first line).
    Refused at import: a duplicate name, an unknown kind, ``judges`` other than images or answers."""

    def deco(factory):
        if name in JUDGES:
            raise ValueError(f"judge {name!r} is registered twice")
        if not kinds or set(kinds) - set(FAMILIES):
            raise ValueError(f"judge {name!r}: kinds must be among {FAMILIES}, got {kinds!r}")
        if judges not in ("images", "answers"):
            raise ValueError(f"judge {name!r}: judges must be 'images' or 'answers', got {judges!r}")
        JUDGES[name] = JudgeSpec(name, factory, tuple(kinds), judges, _summary(factory), tuple(options), offline)
        return factory

    return deco


def get_judge(name: str, kind: str | None = None) -> JudgeSpec:
    """The judge ``name``; with ``kind`` (a family, or ``diffusion`` for any pipeline), a one-line
    error when it does not judge that kind of model."""
    _load_plugins("erasekit.judges")
    spec = _lookup(JUDGES, name, "judge", "judges")
    if kind == "diffusion" and set(spec.kinds) & set(DIFFUSION_FAMILIES):  # a pipeline, family not yet known
        return spec
    if kind is not None and kind not in spec.kinds:
        raise ConfigError(f"judge {name!r} judges {', '.join(spec.kinds)} models, not {kind}; see 'erasekit judges'")
    return spec


def all_judges(kind: str | None = None) -> list[JudgeSpec]:
    """Every registered judge (for ``kind`` only, when given), sorted by name."""
    _load_plugins("erasekit.judges")
    return [JUDGES[k] for k in sorted(JUDGES) if kind is None or kind in JUDGES[k].kinds]


_PLUGINS_LOADED: set[str] = set()


def _load_plugins(group: str = "erasekit.methods") -> None:
    """Import the modules of an entry-point group once (third-party methods or attacks)."""
    if group in _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED.add(group)
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as e:  # a broken plugin must not take the built-in ones down with it
            import warnings

            warnings.warn(f"erasekit: the plugin {ep.name!r} ({ep.value}) of {group} failed to load: {e}", stacklevel=2)


def _lookup(table: dict, name: str, what: str, command: str):
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {what} {name!r}{hint}; available: {', '.join(sorted(table))} (see 'erasekit {command}')")
    return table[name]


def get_method(name: str) -> MethodSpec:
    _load_plugins()
    return _lookup(METHODS, name, "method", "methods")


def all_methods() -> list[MethodSpec]:
    _load_plugins()
    return [METHODS[k] for k in sorted(METHODS)]


def get_attack(name: str, family: str = "diffusion") -> AttackSpec:
    """The attack ``name`` of ``family`` (``diffusion`` pipelines or ``causal-lm`` language models)."""
    _load_plugins("erasekit.attacks")
    if family not in ATTACKS:
        raise ConfigError(f"unknown attack family {family!r}; use one of {', '.join(ATTACK_FAMILIES)}")
    return _lookup(ATTACKS[family], name, f"{'language-model ' if family == 'causal-lm' else ''}attack", "attacks")


def all_attacks(family: str | None = None) -> list[AttackSpec]:
    """Every registered attack (of ``family`` only: ``diffusion`` or ``causal-lm``), sorted by family and name."""
    _load_plugins("erasekit.attacks")
    return [table[k] for f, table in ATTACKS.items() if family in (None, f) for k in sorted(table)]


def _summary(fn) -> str:
    return (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp, what: str) -> Any:
    """Convert CLI strings to the field's type (bool, int, float, str, their Optionals and Literals)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], what)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{what} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if not isinstance(value, str):
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if tp in (int, float, bool, str) and not isinstance(value, tp):
            raise ConfigError(f"{what} must be {tp.__name__}, got {value!r}")
        return value
    try:
        if tp is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp in (int, float):
            return tp(value)
        if tp is str:
            return value
    except ValueError:
        raise ConfigError(f"{what} must be {tp.__name__}, got {value!r}") from None
    raise ConfigError(f"{what} cannot be set from the command line")
