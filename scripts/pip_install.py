"""``pip install`` that takes torch and torchvision from PyTorch's CPU wheel index whenever that index answers.

PyPI's Linux torch is a CUDA build: its nvidia-* libraries and Triton add about 4.1 GB to a virtual environment
(measured: 6.2 GB with the conversion extra, against 0.4 GB for the bot alone), none of which a bot running on
the CPU through OpenVINO uses. PyTorch's CPU index serves the same versions with a ``+cpu`` label, which pip
ranks above PyPI's file of the same version, so adding it as an extra index is enough; the pins in
pyproject.toml still decide the version. Where the index does not answer within a few seconds (a network that
reaches only PyPI or a mirror), pip runs without it straight away instead of retrying it for every package,
and the install falls back to PyPI's build.

Used by the Makefile and the Dockerfile:  ``python scripts/pip_install.py [pip install arguments]``.
``TORCH_INDEX`` names another index (a mirror of PyTorch's); set it empty to skip the CPU index.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Sequence

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_SECONDS = 5.0


def reachable(index: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether the index lists torch within ``timeout`` seconds: one request, no retries."""
    try:
        with urllib.request.urlopen(f"{index.rstrip('/')}/torch/", timeout=timeout) as response:  # noqa: S310
            return bool(response.status < 400)
    except (OSError, ValueError):
        return False


def pip_command(arguments: Sequence[str], index: str | None) -> list[str]:
    extra = ["--extra-index-url", index] if index else []
    return [sys.executable, "-m", "pip", "install", *extra, *arguments]


def main(arguments: Sequence[str]) -> int:
    index = os.environ.get("TORCH_INDEX", CPU_INDEX).strip()
    if index and reachable(index):
        print(f"pip_install: torch and torchvision come as CPU builds from {index}", file=sys.stderr)
        chosen: str | None = index
    else:
        if index:
            print(
                f"pip_install: {index} did not answer (waited up to {PROBE_SECONDS:.0f} s); torch comes from the "
                "default index (on Linux a CUDA build, about 4 GB more; see the README's install sizes)",
                file=sys.stderr,
            )
        chosen = None
    return subprocess.run(pip_command(arguments, chosen), check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
