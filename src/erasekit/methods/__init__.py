"""Erasure methods, one module each; importing this package registers them all (see core/registry.py)."""

from . import ablating, advunlearn, ant, esd, mace, rece, receler, salun, speed, spm, te_unlearn, time, uce  # noqa: F401
