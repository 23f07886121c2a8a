"""A converted model laid out as OpenVINO Model Server serves it (``phi3bot export-ovms``), for those who run OVMS.

OVMS (2025.1 or later) serves a vision-language model through the same GenAI ContinuousBatchingPipeline as this
project's engine, configured by a MediaPipe graph (``graph.pbtxt``) beside the model's files and listed in the
repository's ``config.json``.  The export links the model's files (hard links: no second copy of gigabytes; a
copy where the repository is on another file system), writes ``preprocessor_config.json`` with the chosen
NUM_CROPS (GenAI reads it only there), and a graph with what the engine would use: prefix caching, the KV cache's
size, the batch, the device and the CPU options.  The servable is named as the bot's MODEL names it, which is the
model the bot asks for where a server does not list its models.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from model_store.layout import VISION, check_ir_directory
from model_store.loader import ModelChoice, kv_cache_size_gb, lay_out_with_crops, select_entry
from model_store.store import ModelEntry, ModelStore

GRAPH = "graph.pbtxt"
CONFIG = "config.json"

# OVMS's LLM calculator, as its documentation describes the graph of a continuous-batching VLM servable.
GRAPH_TEMPLATE = """\
input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"

node: {{
  name: "LLMExecutor"
  calculator: "HttpLLMCalculator"
  input_stream: "LOOPBACK:loopback"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  input_side_packet: "LLM_NODE_RESOURCES:llm"
  output_stream: "LOOPBACK:loopback"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
  input_stream_info: {{
    tag_index: "LOOPBACK:0",
    back_edge: true
  }}
  node_options: {{
    [type.googleapis.com / mediapipe.LLMCalculatorOptions]: {{
      pipeline_type: VLM_CB,
      models_path: "./",
      plugin_config: '{plugin_config}',
      enable_prefix_caching: true,
      cache_size: {cache_size},
      max_num_seqs: {max_num_seqs},
      device: "{device}",
    }}
  }}
  input_stream_handler {{
    input_stream_handler: "SyncSetInputStreamHandler",
    options {{
      [mediapipe.SyncSetInputStreamHandlerOptions.ext] {{
        sync_set {{
          tag_index: "LOOPBACK:0"
        }}
      }}
    }}
  }}
}}
"""


def export_for_ovms(choice: ModelChoice, repository: Path, *, name: str, max_num_seqs: int) -> tuple[ModelEntry, Path]:
    """The model ``choice`` selects, as the servable ``name`` of the OVMS model repository ``repository`` (made
    if missing; other servables in its config.json are kept, an earlier export of ``name`` is replaced)."""
    entry = select_entry(ModelStore(choice.store_dir), choice.model, choice.precision)
    check_ir_directory(entry.path, VISION)
    target = repository / name
    if target.exists() and not (target / GRAPH).is_file():
        raise FileExistsError(f"{target} exists and is not an earlier export (it has no {GRAPH}); choose another")
    staging = target.with_name(target.name + ".exporting")
    shutil.rmtree(staging, ignore_errors=True)
    lay_out_with_crops(entry.path, staging, choice.num_crops, _link_or_copy)
    (staging / GRAPH).write_text(graph(choice, max_num_seqs))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    _list_servable(repository / CONFIG, name)
    return entry, target


def graph(choice: ModelChoice, max_num_seqs: int) -> str:
    """The servable's graph; the CPU options go to OpenVINO as the engine passes them (plugin_config)."""
    properties = choice.cpu.properties() if choice.cpu is not None else {}
    return GRAPH_TEMPLATE.format(
        plugin_config=json.dumps(properties),
        cache_size=kv_cache_size_gb(choice.kv_cache_gb),
        max_num_seqs=max_num_seqs,
        device=choice.device,
    )


def _link_or_copy(placed: Path, original: Path) -> None:
    try:
        os.link(original, placed)
    except OSError:  # another file system, or links not allowed there
        shutil.copy2(original, placed)


def _list_servable(config_path: Path, name: str) -> None:
    """Adds ``name`` to the repository's mediapipe_config_list, written whole to a new file and then renamed."""
    config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}
    servables = [item for item in config.get("mediapipe_config_list", []) if item.get("name") != name]
    config["mediapipe_config_list"] = [*servables, {"name": name, "base_path": name}]
    config.setdefault("model_config_list", [])
    written = config_path.with_name(config_path.name + ".new")
    written.write_text(json.dumps(config, indent=2) + "\n")
    written.replace(config_path)
