"""`phi3bot ask` and `phi3bot chat` drive the same engine from a terminal."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from PIL import Image

from devkit.processes import run_phi3bot
from model_store.store import ModelEntry, ModelStore


def _run(args: list[str], store: ModelStore, tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MODEL_STORE_DIR": str(store.root),
        "DATA_DIR": str(tmp_path / "data"),
        "MAX_NEW_TOKENS": "6",
        "LOG_LEVEL": "WARNING",
    }
    return run_phi3bot(args, env, tmp_path, stdin)


def test_ask_streams_an_answer_about_an_image(int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path) -> None:
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (320, 240), (10, 120, 200)).save(image)
    done = _run(["ask", str(image), "What is in this photo?"], int4_store[0], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "an answer was printed"


def test_ask_refuses_a_broken_image_kindly(int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path) -> None:
    broken = tmp_path / "photo.jpg"
    broken.write_bytes(b"this is not a jpeg")
    done = _run(["ask", str(broken), "What?"], int4_store[0], tmp_path)
    assert done.returncode == 1
    assert "not an image" in done.stderr and "Traceback" not in done.stderr


def test_chat_keeps_a_conversation(int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    Image.new("RGB", (100, 100), (200, 0, 0)).save(image)
    script = f"Hello\n/image {image}\nWhat is it?\n/reset\n/quit\n"
    done = _run(["chat"], int4_store[0], tmp_path, stdin=script)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("bot> ") == 2
    assert "Image attached" in done.stdout and "History cleared" in done.stdout


def test_ask_says_a_file_is_missing_before_loading_a_model(tmp_path: Path) -> None:
    empty_store = ModelStore(tmp_path / "no-models")
    done = _run(["ask", str(tmp_path / "missing.jpg"), "What?"], empty_store, tmp_path)
    assert done.returncode == 1
    assert f"There is no image file at {tmp_path / 'missing.jpg'}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
