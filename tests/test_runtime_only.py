"""A runtime-only install (``pip install phi3bot``, no conversion or service extra) serves a converted model.

The processes here run with everything that only the conversion extra brings hidden from imports
(tests/support/runtime_only.py): the bot starts, answers a photo question, reports its health and stops on
SIGTERM; ``/convert`` and ``phi3bot convert --model`` say what to install instead of failing in an import;
``phi3bot convert --from-ir`` takes a converted model into the store; ``phi3bot synthetic`` asks for a development
install and ``phi3bot serve`` for the service's extra.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot.terminal.cli import SERVE_NEEDS_EXTRA, SYNTHETIC_NEEDS_DEVKIT
from devkit.bot_api_server import FakeBotApi
from devkit.harness import ADMIN, USER, photo_bytes, wait_answers
from devkit.processes import ROOT, bot_environment, bot_process, run_phi3bot
from model_store.convert.extra import missing_conversion_modules, require_conversion_extra
from model_store.errors import MissingDependencyError
from model_store.store import ModelEntry, ModelStore
from tests.support.runtime_only import conversion_only_modules, runtime_only_pythonpath
from tests.support.saying import said

INSTALL_ADVICE = "pip install 'phi3bot[convert]'"


def test_the_conversion_check_names_what_is_missing_and_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    assert missing_conversion_modules() == [], "the development install has the conversion extra"
    monkeypatch.setitem(sys.modules, "nncf", None)
    monkeypatch.setitem(sys.modules, "optimum.intel", None)  # imported already when other tests converted
    with pytest.raises(MissingDependencyError) as raised:
        require_conversion_extra()
    message = said(raised.value)
    assert "missing: optimum.intel, nncf" in message
    assert INSTALL_ADVICE in message and "GB" in message and "--from-ir" in message


def test_what_is_hidden_is_the_conversion_extra_and_not_the_runtime() -> None:
    hidden = set(conversion_only_modules())
    assert {"torch", "torchvision", "transformers", "optimum", "nncf", "nvidia", "triton"} <= hidden
    assert {"ray", "fastapi", "uvicorn", "starlette"} <= hidden, "the service's extra"
    runtime = {"openvino", "openvino_genai", "openvino_tokenizers", "telegram", "PIL", "numpy", "pydantic", "httpx"}
    assert not hidden & runtime


def cli(environment: dict[str, str], workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_phi3bot(list(args), environment, workdir)


def imports_torch(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "import torch"]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60, check=False)


def runtime_only(environment: dict[str, str], tmp_path: Path) -> dict[str, str]:
    hidden = runtime_only_pythonpath(tmp_path / "runtime-only", environment.get("PYTHONPATH", ""))
    return {**environment, "PYTHONPATH": hidden}


@pytest.mark.timeout(300)
async def test_the_bot_starts_answers_and_refuses_convert_without_the_conversion_extra(
    api: FakeBotApi, int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    store = int4_store[0]
    environment = runtime_only(bot_environment(api, store.root, tmp_path / "data"), tmp_path)
    hidden = await asyncio.to_thread(imports_torch, environment)
    assert "ModuleNotFoundError" in hidden.stderr, "torch must not be importable in this environment"
    entries = [entry.path for entry in store.entries()]

    async with bot_process(environment, tmp_path) as bot:
        api.push_message(USER, photo=photo_bytes(), caption="What is in this photo?", user_id=USER)
        await wait_answers(api, USER, 1, timeout=120)

        health = await asyncio.to_thread(cli, environment, tmp_path, "health")
        assert health.returncode == 0 and "a model loaded" in health.stdout, health.stdout + health.stderr

        api.push_message(ADMIN, "/convert", user_id=ADMIN)
        await api.wait_for(lambda: bool(api.messages(ADMIN)), 60, "an answer to /convert")
        await asyncio.sleep(1)  # a conversion would now be editing its progress message
        bot.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(bot.process.wait(), 60)

    assert code == 0, bot.stderr[-3000:]
    assert " ERROR " not in bot.stderr and "Traceback" not in bot.stderr, bot.stderr[-3000:]
    [refusal] = api.messages(ADMIN)
    assert refusal.text.startswith("❌ Converting a checkpoint needs") and INSTALL_ADVICE in refusal.text
    assert len(refusal.edits) == 1, "one message, not a conversion that fails later"
    assert [entry.path for entry in store.entries()] == entries
    after = await asyncio.to_thread(cli, environment, tmp_path, "health")
    assert after.returncode == 1 and "no heartbeat" in after.stdout, "a stopped bot is not healthy"


@pytest.mark.timeout(300)
def test_the_command_line_converts_from_ir_and_explains_a_checkpoint_conversion(
    int4_store: tuple[ModelStore, ModelEntry], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    store_root = tmp_path / "store"
    environment = runtime_only(
        {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DATA_DIR": str(tmp_path / "data"),
            "MODEL_STORE_DIR": str(store_root),
            "LOG_LEVEL": "WARNING",
        },
        tmp_path,
    )
    refused = cli(environment, tmp_path, "convert", "--model", str(tiny_checkpoint))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert INSTALL_ADVICE in refused.stderr and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert not ModelStore(store_root).entries() if store_root.exists() else True

    taken = cli(environment, tmp_path, "convert", "--from-ir", str(int4_store[1].path))
    assert taken.returncode == 0, taken.stdout + taken.stderr[-3000:]
    [entry] = ModelStore(store_root).entries()
    assert entry.precision == "int4" and entry.manifest.get("from_ir") is True
    assert entry.manifest["validation"]["generated_tokens"] >= 1, "validated in OpenVINO GenAI without torch"


def test_the_synthetic_command_asks_for_a_development_install(tmp_path: Path) -> None:
    environment = runtime_only({**os.environ, "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path / "data")}, tmp_path)
    done = cli(environment, tmp_path, "synthetic", "tiny", str(tmp_path / "tiny"))
    assert done.returncode == 2 and done.stderr.splitlines() == [SYNTHETIC_NEEDS_DEVKIT], done.stderr[-2000:]
    assert not (tmp_path / "tiny").exists()


def test_the_serve_command_asks_for_the_services_extra(tmp_path: Path) -> None:
    environment = runtime_only({**os.environ, "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path / "data")}, tmp_path)
    done = cli(environment, tmp_path, "serve")
    assert done.returncode == 2 and done.stderr.splitlines() == [SERVE_NEEDS_EXTRA], done.stderr[-2000:]
