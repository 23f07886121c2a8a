"""``phi3bot serve`` as an operator runs it: a process of its own, configured by its environment, that starts a
one-machine Ray cluster, serves the model over the OpenAI protocol to whoever has its key, and on SIGTERM (a
service manager's stop) deletes the service and leaves no process of its own or of the cluster behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from devkit.processes import ROOT, bot_process, free_port, until_serving
from engine.conversation import Turn
from engine.engine import Finished
from engine.remote_engine import RemoteEngine
from model_store.store import ModelEntry, ModelStore
from tests.test_engine import SETTINGS, photo
from tests.test_ray_service import ASSUMED

KEY = "sk-serve-" + "k" * 40


@pytest.fixture
def ray_directory() -> Iterator[Path]:
    """Short, as Ray's socket paths must be."""
    directory = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def niceness(processes: list[psutil.Process]) -> set[int]:
    values = set()
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):  # an idle worker Ray let go
            values.add(process.nice())
    return values


@pytest.mark.timeout(300)
async def test_serve_answers_those_with_its_key_and_sigterm_deletes_it_and_its_cluster(
    int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path, ray_directory: Path
) -> None:
    store, _ = int4_store
    port = free_port()
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MODEL_STORE_DIR": str(store.root),
        "DATA_DIR": str(tmp_path),
        "KV_CACHE_GB": "1",
        "MAX_NEW_TOKENS": "12",
        "SERVICE_API_KEY": KEY,
        "RAY_TMPDIR": str(ray_directory),
        "RAY_AUTH_TOKEN": secrets.token_hex(32),  # a local cluster's own, not ~/.ray's
    }
    environment.pop("RAY_ADDRESS", None)
    url = f"http://127.0.0.1:{port}"
    command = ("serve", "--port", str(port), "--replica-cpus", "0.5")
    async with bot_process(environment, tmp_path, command=command) as served:
        await until_serving(url, served, 180)
        family = psutil.Process(served.process.pid).children(recursive=True)
        assert len(family) >= 3, "the cluster's processes and the replica's model process"
        assert niceness(family) == {0}, "the replica and its model at the normal priority (Ray's workers: 15)"

        async with httpx.AsyncClient(base_url=url, timeout=30) as stranger:
            refused = await stranger.get("/v1/models")
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
            wrong = await stranger.get("/v1/models", headers={"Authorization": "Bearer sk-a-guess"})
            assert wrong.status_code == 401

        client = RemoteEngine(f"{url}/v1", SETTINGS, namespace="serve", assumed=ASSUMED, api_key=KEY)
        try:
            served_model = await client.describe()
            assert served_model.num_crops == 4 and served_model.model_id
            question = Turn("user", "What is in this image?", (photo((20, 160, 40)),))
            events = [event async for event in client.ask("chat", [], question)]
        finally:
            await client.aclose()
        answer = events[-1]
        assert isinstance(answer, Finished) and answer.status == "complete" and answer.text, answer

        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 90) == 0
    log = served.stderr
    assert "stopping the model service" in log, log[-3000:]
    assert KEY not in log, "the service's key is never logged"
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"left behind: {[process.cmdline()[:3] for process in alive]}"
