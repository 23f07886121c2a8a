"""Errors a person can act on: each message says what went wrong and what to do next.

The conversion runs in a child process, so errors cross a process boundary by ``kind`` and message and are
rebuilt on the other side with :func:`error_from_kind`.
"""

from __future__ import annotations


class ModelStoreError(Exception):
    """Base class; ``str(error)`` is meant to be shown to the person who runs the bot."""

    kind = "error"


class NoNetworkError(ModelStoreError):
    kind = "no_network"


class ModelNotFoundError(ModelStoreError):
    kind = "not_found"


class GatedModelError(ModelStoreError):
    kind = "gated"


class InsufficientDiskError(ModelStoreError):
    kind = "disk"


class InsufficientMemoryError(ModelStoreError):
    kind = "memory"


class ConversionInterruptedError(ModelStoreError):
    kind = "interrupted"


class ConversionFailedError(ModelStoreError):
    kind = "failed"


class ValidationFailedError(ModelStoreError):
    kind = "validation"


class MissingModelError(ModelStoreError):
    kind = "missing"


class CorruptModelError(ModelStoreError):
    kind = "corrupt"


class MissingDependencyError(ModelStoreError):
    kind = "dependency"


class BusyError(ModelStoreError):
    kind = "busy"


class UntrustedCodeError(ModelStoreError):
    """A repository nobody vouched for ships Python code that converting it would run (trust_remote_code)."""

    kind = "untrusted"


_KINDS: dict[str, type[ModelStoreError]] = {
    cls.kind: cls
    for cls in (
        ModelStoreError,
        NoNetworkError,
        ModelNotFoundError,
        GatedModelError,
        InsufficientDiskError,
        InsufficientMemoryError,
        ConversionInterruptedError,
        ConversionFailedError,
        ValidationFailedError,
        MissingModelError,
        CorruptModelError,
        MissingDependencyError,
        BusyError,
        UntrustedCodeError,
    )
}


def error_from_kind(kind: str, message: str) -> ModelStoreError:
    return _KINDS.get(kind, ModelStoreError)(message)
