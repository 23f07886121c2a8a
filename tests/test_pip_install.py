"""scripts/pip_install.py: PyTorch's CPU index when it answers, PyPI at once when it does not."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

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


def pip_arguments(monkeypatch: pytest.MonkeyPatch, torch_index: str) -> list[str]:
    calls: list[list[str]] = []

    class Done:
        returncode = 0

    def fake_run(command: list[str], check: bool) -> Done:
        calls.append(command)
        return Done()

    monkeypatch.setenv("TORCH_INDEX", torch_index)
    monkeypatch.setattr(pip_install.subprocess, "run", fake_run)
    assert pip_install.main(["--quiet", "-e", ".[convert,dev]"]) == 0
    [command] = calls
    assert command[:4] == [sys.executable, "-m", "pip", "install"]
    return command[4:]


def test_pip_gets_the_cpu_index_only_when_it_answers(monkeypatch: pytest.MonkeyPatch, index: str) -> None:
    assert pip_arguments(monkeypatch, index) == ["--extra-index-url", index, "--quiet", "-e", ".[convert,dev]"]
    assert pip_arguments(monkeypatch, closed_port()) == ["--quiet", "-e", ".[convert,dev]"]
    assert pip_arguments(monkeypatch, "") == ["--quiet", "-e", ".[convert,dev]"], "TORCH_INDEX= skips it"
