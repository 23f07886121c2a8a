"""Errors a person can act on, as data: each names what went wrong (``reason``) and its particulars (``data``:
plain values), and bot/texts.py says what went wrong and what to do next.

The conversion runs in a child process, so errors cross a process boundary by ``kind``, reason and data and are
rebuilt on the other side with :func:`error_from_kind`.
"""

from __future__ import annotations

from typing import Any


class Reasoned(Exception):
    """An error people are told of by its ``reason`` and ``data`` (plain values, so it crosses a process boundary
    as they are); ``str(error)`` is for developers."""

    def __init__(self, reason: str, /, **data: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data

    def __str__(self) -> str:
        return f"{self.reason} {self.data}" if self.data else self.reason


class ModelStoreError(Reasoned):
    """Base class; bot/texts.py's ``store_error`` says it to the person who runs the bot."""

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


def error_from_kind(kind: str, reason: str, data: dict[str, Any]) -> ModelStoreError:
    return _KINDS.get(kind, ModelStoreError)(reason, **data)
