"""The base of every method's config: numbers are checked when the config is built.

A config is a dataclass whose fields carry the paper's defaults and, in their metadata, a ``help``
string and optional bounds::

    lr: float = field(default=1e-5, metadata={"help": "learning rate", "gt": 0})
    iterations: int = field(default=200, metadata={"help": "optimisation steps", "min": 1})

Bounds: ``min`` / ``max`` (inclusive), ``gt`` / ``lt`` (exclusive). A numeric field without bounds
must be ≥ 0 (every count, scale and weight of the methods here is); every float must be finite, so
``--set lr=nan`` or ``--set erase_scale=inf`` fail when the config is built, before any work.
A subclass adds cross-field rules in ``validate()``; both run on construction (``__post_init__``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass

from erasekit.core.errors import ConfigError


def _numeric_type(tp) -> type | None:
    """``int`` or ``float`` for a field typed so (or ``Optional`` of it), else ``None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _numeric_type(inner[0]) if len(inner) == 1 else None
    return tp if tp in (int, float) else None


def check_numbers(config) -> None:
    """Every numeric field of the dataclass ``config`` is finite and within its bounds (default: ≥ 0)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        tp = _numeric_type(hints.get(f.name))
        value = getattr(config, f.name)
        if tp is None or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{f.name} must be a number, got {value!r}")
        if tp is int and not isinstance(value, int):
            raise ConfigError(f"{f.name} must be a whole number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
        meta = f.metadata
        lo, hi, gt, lt = (
            meta.get("min", 0 if not {"gt", "min"} & set(meta) else None),
            meta.get("max"),
            meta.get("gt"),
            meta.get("lt"),
        )
        for ok, rule in ((lo is None or value >= lo, f">= {lo}"), (hi is None or value <= hi, f"<= {hi}"),
                         (gt is None or value > gt, f"> {gt}"), (lt is None or value < lt, f"< {lt}")):  # fmt: skip
            if not ok:
                raise ConfigError(f"{f.name} must be {rule}, got {value!r}")


@dataclass
class MethodConfig:
    """Base class of method configs: checks numbers and ``validate()`` as soon as it is built."""

    def __post_init__(self) -> None:
        check_numbers(self)
        self.validate()

    def validate(self) -> None:
        """Cross-field rules of the method (override); single-field bounds live in field metadata."""
