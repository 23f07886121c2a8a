"""Hub failures become errors a person can act on; checked over real HTTP against a local stand-in hub."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from model_store.convert import ConversionRequest, run_conversion
from model_store.convert.hub import CHECKPOINT_PATTERNS, remote_size
from model_store.errors import GatedModelError, ModelNotFoundError, NoNetworkError
from model_store.store import ModelStore


class HubErrors(BaseHTTPRequestHandler):
    """Answers like the Hub does for a missing and for a gated repository."""

    def do_GET(self) -> None:
        if "/gated" in self.path:
            self.send_response(403)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("X-Error-Message", "Access to model owner/gated is restricted.")
        else:
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("X-Error-Message", "Repository not found")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "nope"}')

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubErrors)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)
    yield endpoint
    server.shutdown()


def test_unknown_repository(hub: str) -> None:
    with pytest.raises(ModelNotFoundError, match="owner/no-such-model was not found"):
        remote_size("owner/no-such-model", CHECKPOINT_PATTERNS)


def test_gated_repository(hub: str) -> None:
    with pytest.raises(GatedModelError, match="HF_TOKEN"):
        remote_size("owner/gated", CHECKPOINT_PATTERNS)


def test_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(NoNetworkError, match="Could not reach the Hugging Face Hub"):
        remote_size("microsoft/Phi-3.5-vision-instruct", CHECKPOINT_PATTERNS)


def test_a_conversion_of_an_unknown_model_fails_before_touching_the_store(hub: str, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        run_conversion(ConversionRequest(source="owner/no-such-model", store_root=str(tmp_path)))
    assert ModelStore(tmp_path).entries() == []
    assert not any((tmp_path / ".staging").iterdir())
