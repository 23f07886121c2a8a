"""``phi3bot export-ovms``: the converted model as an OpenVINO Model Server repository.  OVMS itself cannot be
installed here (README, "Beyond one machine"), so what it would load is checked: the graph's settings are the
bot's, the model's files are linked rather than copied, the chosen crops are in the file GenAI reads them from,
and the exported directory runs in OpenVINO GenAI's VLM pipeline (the one OVMS serves VLMs through)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from devkit.processes import run_phi3bot
from model_store.convert.validate import validate_model
from model_store.store import ModelEntry, ModelStore

SERVED_AS = "microsoft/Phi-3.5-vision-instruct"  # MODEL's default: what the bot asks a server for


def graph_options(graph: str) -> dict[str, str]:
    """The LLM calculator's options, ``name: value`` per line."""
    [block] = re.findall(r"LLMCalculatorOptions\]: \{(.*?)\n    \}", graph, re.S)
    return dict(re.findall(r"^\s*(\w+): (.+?),?$", block, re.M))


def test_export_lays_out_a_repository_with_the_bots_settings_that_genai_runs(
    int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    store, entry = int4_store
    repository = tmp_path / "ovms"
    environment = {
        **os.environ,
        "MODEL_STORE_DIR": str(store.root),
        "DATA_DIR": str(tmp_path / "data"),
        "NUM_CROPS": "2",
        "KV_CACHE_GB": "3",
        "BATCH_SIZE": "6",
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": "32",
    }
    done = run_phi3bot(["export-ovms", str(repository)], environment, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--config_path /models/config.json" in done.stdout and ":8000/v3" in done.stdout

    served = repository / SERVED_AS
    options = graph_options((served / "graph.pbtxt").read_text())
    assert options == {
        "pipeline_type": "VLM_CB",
        "models_path": '"./"',
        "plugin_config": """'{"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}'""",
        "enable_prefix_caching": "true",
        "cache_size": "3",
        "max_num_seqs": "6",
        "device": '"CPU"',
    }
    config = json.loads((repository / "config.json").read_text())
    assert config["mediapipe_config_list"] == [{"name": SERVED_AS, "base_path": SERVED_AS}]

    weights = entry.path / "openvino_language_model.bin"
    assert (served / weights.name).stat().st_ino == weights.stat().st_ino, "linked, not a second copy"
    assert json.loads((served / "preprocessor_config.json").read_text())["num_crops"] == 2
    assert json.loads((entry.path / "preprocessor_config.json").read_text())["num_crops"] != 2, "the store untouched"
    assert validate_model(served)["generated_tokens"] >= 1


def test_a_second_export_keeps_other_servables_and_an_unrelated_directory_is_never_replaced(
    int4_store: tuple[ModelStore, ModelEntry], tmp_path: Path
) -> None:
    store, _ = int4_store
    repository = tmp_path / "ovms"
    environment = {**os.environ, "MODEL_STORE_DIR": str(store.root), "DATA_DIR": str(tmp_path / "data")}
    for name in ("first", "second", "first"):
        done = run_phi3bot(["export-ovms", str(repository), "--name", name], environment, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((repository / "config.json").read_text())
    assert sorted(item["name"] for item in config["mediapipe_config_list"]) == ["first", "second"]

    (repository / "mine").mkdir()
    (repository / "mine" / "notes.txt").write_text("keep me")
    refused = run_phi3bot(["export-ovms", str(repository), "--name", "mine"], environment, tmp_path)
    assert refused.returncode == 1 and "is not an earlier export" in refused.stderr
    assert (repository / "mine" / "notes.txt").read_text() == "keep me"
