"""Hub failures become errors a person can act on, no Hub request waits for ever, and what is converted from
the Hub is the commits checked (and confirmed, for code nobody vouched for), the repositories the checkpoint's
configuration names included; over real HTTP against the stand-in Hub."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from devkit.hub_server import StandInHub
from devkit.processes import run_phi3bot
from model_store.convert import ConversionRequest, convert_in_subprocess, run_conversion
from model_store.convert.hub import CHECKPOINT_PATTERNS, download, limit_waits, snapshot
from model_store.errors import (
    CorruptModelError,
    GatedModelError,
    ModelNotFoundError,
    NoNetworkError,
    UntrustedCodeError,
)
from model_store.store import ModelStore
from tests.support.hub_checkpoints import CLIP_REPO, push_clip, push_phi3v
from tests.support.saying import raises_saying, said


def test_unknown_repository(hub: StandInHub) -> None:
    with raises_saying(ModelNotFoundError, "owner/no-such-model was not found"):
        snapshot("owner/no-such-model", CHECKPOINT_PATTERNS)


def test_gated_repository(hub: StandInHub) -> None:
    hub.push("owner/gated", {"config.json": b"{}"})
    hub.gate("owner/gated", token="hf_the_right_one")
    with raises_saying(GatedModelError, "HF_TOKEN"):
        snapshot("owner/gated", CHECKPOINT_PATTERNS)
    with raises_saying(GatedModelError, "HF_TOKEN"):
        snapshot("owner/gated", CHECKPOINT_PATTERNS, token="hf_a_wrong_one")
    assert snapshot("owner/gated", CHECKPOINT_PATTERNS, token="hf_the_right_one").files == ("config.json",)


def test_a_hub_that_accepts_and_never_answers_is_given_up_on(hub: StandInHub) -> None:
    """huggingface_hub's look-ups pass no timeout, and it asks again five times for a file that does not come."""
    sha = hub.push("owner/model", {"config.json": b"{}", "model.safetensors": b"weights"})
    pinned = snapshot("owner/model", CHECKPOINT_PATTERNS)
    limit_waits(1.0)
    started = time.monotonic()
    hub.stall("/resolve/")
    with raises_saying(NoNetworkError, r"did not answer within 1 s about owner/model\. .*HUB_TIMEOUT_SECONDS"):
        download(pinned, CHECKPOINT_PATTERNS)
    hub.stall()
    with raises_saying(NoNetworkError, rf"did not answer within 1 s about owner/model at revision {sha}\."):
        snapshot("owner/model", CHECKPOINT_PATTERNS, sha)
    assert time.monotonic() - started < 6, "each request gave up after the second allowed, and was not repeated"


def _dead_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)
    monkeypatch.setattr("huggingface_hub.file_download.HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/{filename}")


def test_a_commit_the_cache_holds_in_part_is_not_taken_for_the_whole(
    hub: StandInHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the Hub, huggingface_hub answers a download with the commit's folder in the cache, whatever it
    holds: here the configuration read before a confirmation, without the weights."""
    hub.push("owner/model", {"config.json": b"{}", "model.safetensors": b"weights"})
    pinned = snapshot("owner/model", CHECKPOINT_PATTERNS)
    download(pinned, ["*.json"])
    _dead_endpoint(monkeypatch)
    with raises_saying(NoNetworkError, r"Could not get every file of owner/model .*model\.safetensors"):
        download(pinned, CHECKPOINT_PATTERNS)


def test_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    _dead_endpoint(monkeypatch)
    with raises_saying(NoNetworkError, "Could not reach the Hugging Face Hub"):
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
    revision that would run, the repository it names for its image processor at the revision that would be
    read, and how to confirm exactly those.  Only configuration files were read to find them."""
    clip = push_clip(hub, tiny_checkpoint)
    sha = push_phi3v(hub, "someone/phi3v-finetune", tiny_checkpoint)
    with pytest.raises(UntrustedCodeError) as refused:
        run_conversion(ConversionRequest(source="someone/phi3v-finetune", store_root=str(tmp_path)))
    message = said(refused.value)
    assert "someone/phi3v-finetune is not one of the known Phi-3-vision repositories" in message
    assert f"It also reads the configuration of {CLIP_REPO} at {clip}." in message
    command = (
        f"phi3bot convert --model someone/phi3v-finetune --revision {sha} --trust-remote-code --pin {CLIP_REPO}@{clip}"
    )
    assert message.endswith(command)
    read = hub.files_read()
    assert read and all(path.endswith(".json") for path in read), "no code and no weights were downloaded"
    assert ModelStore(tmp_path).entries() == []

    confirmed_without_its_clip = ConversionRequest(
        source="someone/phi3v-finetune", store_root=str(tmp_path), revision=sha, trust_remote_code=True
    )
    with raises_saying(UntrustedCodeError, f"--pin {CLIP_REPO}@{clip}$"):
        run_conversion(confirmed_without_its_clip)
    assert all(path.endswith(".json") for path in hub.files_read())


def _with_auto_map(config: bytes, auto_map: dict[str, str]) -> bytes:
    return json.dumps({**json.loads(config), "auto_map": auto_map}).encode()


def test_code_from_another_repository_is_refused_even_when_confirmed(
    hub: StandInHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """transformers would fetch ``other/repo--module.Class`` from that repository at its latest commit; and a
    repository named for the image processor is read for its configuration only."""
    clip = push_clip(hub, tiny_checkpoint)
    config = (tiny_checkpoint / "config.json").read_bytes()
    elsewhere = _with_auto_map(config, {"AutoConfig": "someone/code--configuration_phi3_v.Phi3VConfig"})
    borrowing = push_phi3v(hub, "someone/borrowing", tiny_checkpoint, files={"config.json": elsewhere})
    with raises_saying(UntrustedCodeError, r"loads code from another repository \(someone/code--config"):
        run_conversion(
            ConversionRequest(
                source="someone/borrowing",
                store_root=str(tmp_path),
                revision=borrowing,
                trust_remote_code=True,
                named_revisions={CLIP_REPO: clip},
            )
        )

    clip_config = (tiny_checkpoint / "clip-vit-large-patch14-336" / "config.json").read_bytes()
    with_code = _with_auto_map(clip_config, {"AutoConfig": "configuration_clip.ClipConfig"})
    hub.push("someone/clip-with-code", {"config.json": with_code, "configuration_clip.py": b"raise SystemExit"})
    push_phi3v(hub, "microsoft/Phi-3.5-vision-instruct", tiny_checkpoint, clip_repo="someone/clip-with-code")
    with raises_saying(UntrustedCodeError, r"someone/clip-with-code, which .* names .* ships code"):
        run_conversion(ConversionRequest(source="phi-3.5-vision", store_root=str(tmp_path)))

    push_phi3v(hub, "someone/elsewhere", tiny_checkpoint, clip_repo="/etc")
    with raises_saying(CorruptModelError, "names '/etc' for its image processor"):
        run_conversion(ConversionRequest(source="someone/elsewhere", store_root=str(tmp_path)))
    assert all(path.endswith(".json") for path in hub.files_read()), "no code and no weights were downloaded"


@pytest.mark.timeout(300)
def test_a_confirmed_conversion_reads_only_what_was_confirmed_offline_and_without_the_token(
    hub: StandInHub, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLIP repository moves on after the confirmation, to a commit whose code would run if the export
    fetched it by name (AutoConfig with trust_remote_code); the export runs the confirmed checkpoint's code,
    which writes down what it finds, offline and without the token (here also in the environment given)."""
    token = "hf_gatedTokenForTheStandInHub0123"
    monkeypatch.setenv("HF_TOKEN", token)
    # Where transformers copies the code: the export may write there (export.py), so code that ran leaves a mark.
    marks = tmp_path / "modules"
    monkeypatch.setenv("HF_MODULES_CACHE", str(marks))
    seen, ran = marks / "seen-by-the-checkpoints-code.json", marks / "malicious-v2-ran"
    store = tmp_path / "store"
    code = (tiny_checkpoint / "configuration_phi3_v.py").read_text() + (
        "\nimport json as _json, os as _os, pathlib as _pathlib\n"
        "def _try(action):\n"
        "    try:\n"
        "        action()\n"
        "        return 'allowed'\n"
        "    except OSError as error:\n"
        "        return type(error).__name__\n"
        "_found = {name: _os.environ.get(name) for name in ('HF_TOKEN', 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')}\n"
        f"_found['store'] = _try(lambda: _pathlib.Path({str(store)!r}, 'planted').write_text('x'))\n"
        "_found['parent'] = _try(lambda: _pathlib.Path(f'/proc/{_os.getppid()}/maps').read_bytes())\n"
        f"_pathlib.Path({str(seen)!r}).write_text(_json.dumps(_found))\n"
    )
    clip = push_clip(hub, tiny_checkpoint)
    sha = push_phi3v(hub, "someone/phi3v-finetune", tiny_checkpoint, files={"configuration_phi3_v.py": code.encode()})
    for repo in (CLIP_REPO, "someone/phi3v-finetune"):
        hub.gate(repo, token=token)
    confirmed = ConversionRequest(
        source="someone/phi3v-finetune",
        store_root=str(store),
        precision="int8",
        validate=False,
        revision=sha,
        trust_remote_code=True,
        named_revisions={CLIP_REPO: clip},
        hf_token=token,
    )
    assert token not in repr(confirmed)
    clip_config = (tiny_checkpoint / "clip-vit-large-patch14-336" / "config.json").read_bytes()
    malicious = f"import pathlib\npathlib.Path({str(ran)!r}).write_text('MALICIOUS v2')\n".encode()
    moved_on = hub.change(
        CLIP_REPO,
        {
            "config.json": _with_auto_map(clip_config, {"AutoConfig": "configuration_clip.ClipConfig"}),
            "configuration_clip.py": malicious,
        },
    )
    entry = convert_in_subprocess(confirmed)
    assert entry.manifest["pinned"] == {"someone/phi3v-finetune": sha, CLIP_REPO: clip}
    assert not ran.exists(), "MALICIOUS v2 ran"
    assert not any(moved_on in path or "/main" in path for _, path in hub.requests), (
        "the new commit was never asked for"
    )
    found = json.loads(seen.read_text())
    assert found == {
        "HF_TOKEN": None,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "store": "PermissionError",  # beyond its output: it could rewrite the model being served
        "parent": "PermissionError",  # the conversion's process, whose memory holds the token
    }


@pytest.mark.timeout(300)
def test_a_known_repository_converts_without_confirmation_with_the_token_from_env_and_records_its_revisions(
    hub: StandInHub, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A repository the bot knows needs no confirmation; what is converted is the commits checked (the
    repository's and the CLIP repository its configuration names), recorded in the store.  Outside Docker nothing
    exports .env's HF_TOKEN: Settings reads it, and the Hub's calls get it as an argument (the environment no
    longer holds it by then); logged at DEBUG, it appears nowhere."""
    token = "hf_fromTheDotEnvFile0123456789abcdef"
    clip = push_clip(hub, tiny_checkpoint)
    sha = push_phi3v(hub, "microsoft/Phi-3.5-vision-instruct", tiny_checkpoint)
    for repo in (CLIP_REPO, "microsoft/Phi-3.5-vision-instruct"):
        hub.gate(repo, token=token)
    (tmp_path / ".env").write_text(f"HF_TOKEN={token}\nLOG_LEVEL=DEBUG\nDATA_DIR={tmp_path / 'data'}\n")
    environment = {name: value for name, value in os.environ.items() if name != "HF_TOKEN"}
    environment["PYTHONPATH"] = str(Path(__file__).parents[1])
    arguments = ["convert", "--model", "phi-3.5-vision", "--precision", "int8", "--no-validate"]
    done = run_phi3bot(arguments, environment, tmp_path, module="bot.terminal.cli")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Converted microsoft/Phi-3.5-vision-instruct at revision {sha} (int8)" in done.stdout
    [entry] = ModelStore(tmp_path / "data" / "models").entries()  # recorded in the store's manifest
    assert entry.revision == sha and entry.source == "microsoft/Phi-3.5-vision-instruct"
    assert entry.manifest["pinned"] == {"microsoft/Phi-3.5-vision-instruct": sha, CLIP_REPO: clip}
    read = hub.files_read()
    assert read and all(
        path.startswith((f"microsoft/Phi-3.5-vision-instruct/resolve/{sha}/", f"{CLIP_REPO}/resolve/{clip}/"))
        for path in read
    )
    assert token not in done.stdout + done.stderr
