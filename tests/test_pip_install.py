"""scripts/pip_install.py: torch and torchvision alone from PyTorch's CPU index when it answers, PyPI at once
when it does not, and never that index as an extra index of the whole install (dependency confusion)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bot.texts import INSTALL_HINT
from scripts import pip_install


class _Index(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/whl/cpu/torch/" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def index() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/whl/cpu"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent() -> Iterator[str]:
    """A server that accepts connections and never answers, as a firewall that drops packets looks to a client."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/whl/cpu"


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/whl/cpu"


def test_an_index_that_lists_torch_is_reachable(index: str) -> None:
    assert pip_install.reachable(index)
    assert not pip_install.reachable(index.replace("/cpu", "/cu130")), "a 404 is no index"


def test_an_unreachable_index_is_given_up_after_one_short_wait(silent: str) -> None:
    started = time.monotonic()
    assert not pip_install.reachable(closed_port())
    assert not pip_install.reachable("not a url")
    assert time.monotonic() - started < 2
    started = time.monotonic()
    assert not pip_install.reachable(silent, timeout=0.5)
    assert time.monotonic() - started < 3, "no retries after the timeout"


ROOT = Path(__file__).parents[1]


def pinned(*names: str) -> list[str]:
    """What pyproject.toml pins for these packages in the conversion extra, read independently of the script."""
    project = pip_install.tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    convert = project["optional-dependencies"]["convert"]
    return [requirement for name in names for requirement in convert if requirement.startswith(f"{name}==")]


def run_pip_install(
    monkeypatch: pytest.MonkeyPatch, torch_index: str, *arguments: str, pip_exits: int = 0
) -> tuple[int, list[list[str]]]:
    """main()'s exit code for these arguments and the pip commands it ran (each exiting ``pip_exits``), from the
    project's root as the Makefile runs it."""
    calls: list[list[str]] = []

    class Done:
        returncode = pip_exits

    def fake_run(command: list[str], check: bool) -> Done:
        calls.append(command)
        return Done()

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("TORCH_INDEX", torch_index)
    monkeypatch.setattr(pip_install.subprocess, "run", fake_run)
    code = pip_install.main(list(arguments))
    for command in calls:
        assert command[:4] == [sys.executable, "-m", "pip", "install"]
        assert not any(argument.startswith("--extra-index-url") for argument in command), "dependency confusion"
    return code, calls


def pip_commands(monkeypatch: pytest.MonkeyPatch, torch_index: str, *arguments: str) -> list[list[str]]:
    """The pip commands of an install that succeeds, without ``python -m pip install``."""
    code, calls = run_pip_install(monkeypatch, torch_index, *arguments)
    assert code == 0
    return [command[4:] for command in calls]


def test_torch_alone_comes_from_the_cpu_index_then_the_rest_from_the_default_one(
    monkeypatch: pytest.MonkeyPatch, index: str
) -> None:
    torch, torchvision = pinned("torch", "torchvision")
    assert pip_commands(monkeypatch, index, "--quiet", "-e", ".[convert,dev]") == [
        ["--quiet", "--index-url", index, "--no-deps", torch, torchvision],
        ["--quiet", "-e", ".[convert,dev]"],
    ]
    assert pip_commands(monkeypatch, index, ".[convert]") == [
        ["--index-url", index, "--no-deps", torch, torchvision],
        [".[convert]"],
    ], "the Dockerfile's conversion image"


def test_without_the_cpu_index_or_without_torch_pip_runs_once_on_the_default_index(
    monkeypatch: pytest.MonkeyPatch, index: str
) -> None:
    assert pip_commands(monkeypatch, closed_port(), "--quiet", "-e", ".[convert,dev]") == [
        ["--quiet", "-e", ".[convert,dev]"]
    ]
    assert pip_commands(monkeypatch, "", ".[convert]") == [[".[convert]"]], "TORCH_INDEX= skips it"
    assert pip_commands(monkeypatch, index, ".") == [["."]], "the serving image needs no torch"
    assert pip_commands(monkeypatch, index, ".[dev]") == [[".[dev]"]]


def test_a_failed_torch_step_stops_the_install(monkeypatch: pytest.MonkeyPatch, index: str) -> None:
    code, calls = run_pip_install(monkeypatch, index, ".[convert]", pip_exits=1)
    assert code == 1
    assert len(calls) == 1 and "--index-url" in calls[0]


def test_the_makefile_and_the_dockerfile_install_with_the_script_and_name_no_extra_index() -> None:
    for name in ("Makefile", "Dockerfile"):
        text = (ROOT / name).read_text()
        assert "scripts/pip_install.py" in text, name
        assert "extra-index-url" not in text, name


def test_the_advice_given_without_the_conversion_extra_installs_the_same_way() -> None:
    """A bot without the extra says how to install it: the same two steps, at the versions pyproject.toml pins."""
    torch_step = f"pip install --no-deps --index-url {pip_install.CPU_INDEX} {' '.join(pinned('torch', 'torchvision'))}"
    assert torch_step in INSTALL_HINT and "pip install 'phi3bot[convert]'" in INSTALL_HINT
    assert "extra-index-url" not in INSTALL_HINT
