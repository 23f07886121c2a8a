"""Hub failures become errors a person can act on, and what is converted from the Hub is the commit checked
(and confirmed, for code nobody vouched for); over real HTTP against the stand-in Hub."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from model_store.convert import ConversionRequest, convert_in_subprocess, run_conversion
from model_store.convert.hub import CHECKPOINT_PATTERNS, snapshot
from model_store.errors import GatedModelError, ModelNotFoundError, NoNetworkError, UntrustedCodeError
from model_store.store import ModelStore
from tests.support.hub_server import StandInHub


def test_unknown_repository(hub: StandInHub) -> None:
    with pytest.raises(ModelNotFoundError, match="owner/no-such-model was not found"):
        snapshot("owner/no-such-model", CHECKPOINT_PATTERNS)


def test_gated_repository(hub: StandInHub) -> None:
    hub.gate("owner/gated")
    with pytest.raises(GatedModelError, match="HF_TOKEN"):
        snapshot("owner/gated", CHECKPOINT_PATTERNS)


def test_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(NoNetworkError, match="Could not reach the Hugging Face Hub"):
        snapshot("microsoft/Phi-3.5-vision-instruct", CHECKPOINT_PATTERNS)


def test_a_conversion_of_an_unknown_model_fails_before_touching_the_store(hub: StandInHub, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        run_conversion(ConversionRequest(source="owner/no-such-model", store_root=str(tmp_path)))
    assert ModelStore(tmp_path).entries() == []
    assert not any((tmp_path / ".staging").iterdir())


def test_a_repository_nobody_vouched_for_is_not_downloaded_without_confirmation(
    hub: StandInHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Its Python code would run in the conversion (trust_remote_code): the refusal names the repository, the
    revision that would run and how to confirm exactly that one."""
    sha = hub.push_directory("someone/phi3v-finetune", tiny_checkpoint)
    with pytest.raises(UntrustedCodeError) as refused:
        run_conversion(ConversionRequest(source="someone/phi3v-finetune", store_root=str(tmp_path)))
    message = str(refused.value)
    assert "someone/phi3v-finetune is not one of the known Phi-3-vision repositories" in message
    assert f"phi3bot convert someone/phi3v-finetune --revision {sha} --trust-remote-code" in message
    assert hub.files_read() == [], "nothing was downloaded"
    assert ModelStore(tmp_path).entries() == []


@pytest.mark.timeout(300)
def test_a_known_repository_converts_without_confirmation_and_its_revision_is_recorded(
    hub: StandInHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    sha = hub.push_directory("microsoft/Phi-3.5-vision-instruct", tiny_checkpoint)
    request = ConversionRequest(source="phi-3.5-vision", store_root=str(tmp_path), precision="int8", validate=False)
    entry = convert_in_subprocess(request)
    assert entry.revision == sha and entry.source == "microsoft/Phi-3.5-vision-instruct"
    assert ModelStore(tmp_path).entries() == [entry], "recorded in the store's manifest"
    read = hub.files_read("microsoft/Phi-3.5-vision-instruct")
    assert read and all(path.startswith(f"microsoft/Phi-3.5-vision-instruct/resolve/{sha}/") for path in read)
