"""An environment in which Python cannot import what ``pip install phi3bot`` (no extras) leaves out.

What to hide: every distribution that the ``convert`` and ``serve`` extras pull in and the runtime dependencies do
not (torch, torchvision, transformers, optimum, NNCF, the nvidia-* libraries, sympy, Ray, FastAPI, uvicorn, ...),
read from the installed metadata so that it follows pyproject.toml, mapped to the top-level modules it installs;
and devkit, the clone's development package, which the wheel leaves out. A sitecustomize.py on PYTHONPATH marks
those modules absent (``sys.modules[name] = None``) in every Python process started with the environment, so the
bot's model process and a conversion's child process are covered as well as the bot.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "phi3bot"
EXTRAS = ("convert", "serve")
DEVELOPMENT_PACKAGES = ("devkit",)


def _wanted(requirement: Requirement, extras: Iterable[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras))


def _closure(roots: Iterable[Requirement]) -> set[str]:
    """Canonical names of the installed distributions that ``roots`` need, transitively."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue  # not for this platform
        seen.add(name)
        for text in distribution.requires or []:
            child = Requirement(text)
            if _wanted(child, requirement.extras):
                pending.append(child)
    return seen


def conversion_only_distributions() -> set[str]:
    requirements = [Requirement(text) for text in metadata.distribution(PROJECT).requires or []]
    runtime = _closure(r for r in requirements if _wanted(r, ()))
    with_extra = _closure(r for r in requirements if _wanted(r, EXTRAS))
    return with_extra - runtime


def conversion_only_modules() -> list[str]:
    """Top-level modules whose every provider only an extra brings (a namespace such as nvidia has several)."""
    only = conversion_only_distributions()
    return sorted(
        module
        for module, providers in metadata.packages_distributions().items()
        if module.isidentifier() and all(canonicalize_name(provider) in only for provider in providers)
    )


def runtime_only_pythonpath(directory: Path, pythonpath: str) -> str:
    """Write the sitecustomize.py into ``directory``; returns the PYTHONPATH that puts it first."""
    directory.mkdir(parents=True, exist_ok=True)
    hidden = [*conversion_only_modules(), *DEVELOPMENT_PACKAGES]
    (directory / "sitecustomize.py").write_text(
        '"""Written by tests/support/runtime_only.py: these modules are not installed by `pip install phi3bot`."""\n'
        "import sys\n\n"
        f"for name in {hidden!r}:\n"
        "    sys.modules.setdefault(name, None)\n"
    )
    return os.pathsep.join([str(directory), *([pythonpath] if pythonpath else [])])
