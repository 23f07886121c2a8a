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

# What the extra weighs is measured in the README ("Installing"); the hint repeats it for the person converting.
# PyTorch's index is asked for torch and torchvision alone (at the pins of pyproject.toml), never added as an extra
# index of the whole install, where a package of the same name as one of ours could win (scripts/pip_install.py).
INSTALL_HINT = (
    "Install it with `pip install 'phi3bot[convert]'`: about 1.2 GB with PyTorch's CPU wheels, taken first with "
    "`pip install --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1`, "
    "or 5.8 GB with the default Linux torch, which brings CUDA libraries. With Docker Compose, convert with its "
    '`convert` service instead (README, "Docker Compose"). Or take an already converted OpenVINO model: '
    "`phi3bot convert --from-ir OpenVINO/Phi-3.5-vision-instruct-int4-ov`."
)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # its parent package (optimum, for optimum.intel) is missing
        return False


def missing_conversion_modules() -> list[str]:
    return [name for name in CONVERSION_MODULES if not _importable(name)]


def require_conversion_extra() -> None:
    """Raise :class:`MissingDependencyError`, with what to install, unless a checkpoint can be converted here."""
    missing = missing_conversion_modules()
    if missing:
        raise MissingDependencyError(
            f"Converting a checkpoint needs phi3bot's conversion extra, which this install does not have (missing: "
            f"{', '.join(missing)}). {INSTALL_HINT}"
        )
