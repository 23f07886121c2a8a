"""Whether this install can convert checkpoints: the conversion extra is optional.

A bot that serves an already converted model, or takes one with ``--from-ir``, never imports torch,
transformers, optimum-intel or NNCF, so ``pip install phi3bot`` leaves them out (README, "Installing").
Asking before a conversion starts turns a missing extra into one message that says what to install and what
it weighs, instead of an ImportError from a child process, possibly after downloading the whole checkpoint.
"""

from __future__ import annotations

import importlib.util

from model_store.errors import MissingDependencyError

CONVERSION_MODULES = ("torch", "torchvision", "transformers", "optimum.intel", "nncf")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # its parent package (optimum, for optimum.intel) is missing
        return False


def missing_conversion_modules() -> list[str]:
    return [name for name in CONVERSION_MODULES if not _importable(name)]


def require_conversion_extra() -> None:
    """Raise :class:`MissingDependencyError`, naming what is missing (bot/texts.py says what to install), unless a
    checkpoint can be converted here."""
    missing = missing_conversion_modules()
    if missing:
        raise MissingDependencyError("missing_extra", missing=missing)
