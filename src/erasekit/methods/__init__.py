"""Erasure methods, one module each; importing this package registers them all (see core/registry.py)."""

from . import rece, speed, time, uce  # noqa: F401
