"""``pip install`` in two steps: torch and torchvision alone from PyTorch's CPU wheel index, then the rest.

PyPI's Linux torch is a CUDA build: its nvidia-* libraries and Triton add about 4.1 GB to a virtual environment
(measured: 6.2 GB with the conversion extra, against 0.4 GB for the bot alone), none of which a bot running on
the CPU through OpenVINO uses. PyTorch's CPU index serves the same versions with a ``+cpu`` label.

That index is never an extra index of the whole install (``--extra-index-url``): pip would then take any
package from whichever index offers it at the higher version, so a package published there under the name of
one of ours would win (dependency confusion). The first step asks it alone (``--index-url``) for torch and
torchvision only, at the versions pyproject.toml pins in the extras being installed, without their
dependencies (``--no-deps``). The second step installs the project from the default index as asked: pip keeps
the installed ``2.14.1+cpu``, which satisfies ``torch==2.14.1``, and brings torch's own dependencies from there.
An install without torch (``.`` alone) has no first step. Where the index does not answer within a few
seconds (a network that reaches only PyPI or a mirror), the first step is skipped at once instead of pip
retrying the index, and torch comes from the default index.

Used by the Makefile and the Dockerfile:  ``python scripts/pip_install.py [pip flags] [-e] '.[extras]'``.
``TORCH_INDEX`` names another index (a mirror of PyTorch's); set it empty to skip the CPU index.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pip, which this script drives, ships the same parser for Python 3.10
    from pip._vendor import tomli as tomllib

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_SECONDS = 5.0
TORCH_PACKAGES = ("torch", "torchvision")
# The project as pip is given it: "." with its extras, e.g. ".[convert,dev]".
PROJECT = re.compile(r"\.(?:\[(?P<extras>[^\]]*)\])?")
REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9._-]+")


def reachable(index: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether the index lists torch within ``timeout`` seconds: one request, no retries."""
    try:
        with urllib.request.urlopen(f"{index.rstrip('/')}/torch/", timeout=timeout) as response:  # noqa: S310
            return bool(response.status < 400)
    except (OSError, ValueError):
        return False


def torch_pins(arguments: Sequence[str], project: Path) -> list[str]:
    """torch and torchvision as pinned by the extras of the project named in ``arguments`` (none without)."""
    extras = {
        extra.strip()
        for argument in arguments
        if (match := PROJECT.fullmatch(argument)) and match["extras"]
        for extra in match["extras"].split(",")
    }
    optional = tomllib.loads((project / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    return [
        requirement
        for extra in sorted(extras)
        for requirement in optional.get(extra, [])
        if (name := REQUIREMENT_NAME.match(requirement)) and name.group(0).lower() in TORCH_PACKAGES
    ]


def pip_commands(arguments: Sequence[str], index: str | None, pins: Sequence[str]) -> list[list[str]]:
    """The torch step (with the flags given, such as --quiet) when there is an index and something to take from
    it, then the install as asked."""
    pip = [sys.executable, "-m", "pip", "install"]
    flags = [argument for argument in arguments if argument.startswith("-") and argument not in ("-e", "--editable")]
    torch_step = [[*pip, *flags, "--index-url", index, "--no-deps", *pins]] if index and pins else []
    return [*torch_step, [*pip, *arguments]]


def main(arguments: Sequence[str]) -> int:
    pins = torch_pins(arguments, Path.cwd())
    index = os.environ.get("TORCH_INDEX", CPU_INDEX).strip() if pins else ""
    chosen: str | None = None
    if index and reachable(index):
        print(f"pip_install: {' and '.join(pins)} come as CPU builds from {index}, alone", file=sys.stderr)
        chosen = index
    elif index:
        print(
            f"pip_install: {index} did not answer (waited up to {PROBE_SECONDS:.0f} s); torch comes from the "
            "default index (on Linux a CUDA build, about 4 GB more; see the README's install sizes)",
            file=sys.stderr,
        )
    for command in pip_commands(arguments, chosen, pins):
        code = subprocess.run(command, check=False).returncode
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
