"""Errors that users see. Each message says what is wrong and how to fix it; the CLI prints it on one line."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ErasekitError(Exception):
    """Base class of every error erasekit raises on purpose (bad input, missing files, ...)."""


class MissingFileError(ErasekitError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class ModelLoadError(ErasekitError):
    """A model id or directory could not be loaded as a diffusers pipeline."""


class InvalidInputError(ErasekitError, ValueError):
    """An argument has a value outside what is accepted (bad number, empty prompt, ...)."""


class UnsupportedModelError(ErasekitError):
    """The pipeline's family, or this method on it, is not supported."""


class ConfigError(ErasekitError, ValueError):
    """An erasure request or a method's parameters are invalid (unknown name, bad value, empty list...)."""


class IncompatibleErasureError(ErasekitError):
    """An erasure does not fit the model it is applied to (other base weights, missing tensors)."""


class SingularSystemError(ErasekitError):
    """A closed-form solve met a singular or ill-conditioned system."""


class OutputPathError(ErasekitError):
    """An output path would replace or delete something erasekit did not write (or is a protected place)."""


class CorruptFileError(ErasekitError):
    """A file erasekit reads (erasure, checkpoint, report) is truncated, garbled or inconsistent."""


class NonFiniteError(ErasekitError):
    """A computed or loaded tensor holds NaN or infinity; nothing is saved or applied."""
