"""One conversion from start to installed store entry, in phases that report progress.

Order matters for safety: check resources, build everything in a staging directory, validate it with
OpenVINO GenAI, and only then swap it in atomically.  Any failure or kill before the swap leaves the model
that was serving untouched; the staging directory is removed now or by the next conversion.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from model_store.convert import hub, pins, preflight
from model_store.convert.extra import require_conversion_extra
from model_store.convert.validate import validate_model
from model_store.errors import CorruptModelError, MissingModelError, UntrustedCodeError
from model_store.layout import VISION, ModelKind, check_ir_directory, detect_weight_precision, kind_of, read_json
from model_store.progress import PhasePlan, ProgressCallback, ignore_progress
from model_store.sources import INT4_GROUP_SIZE, INT4_RATIO, ModelSource, parse_precision, parse_source
from model_store.store import ModelEntry, ModelStore

log = logging.getLogger(__name__)

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ConversionRequest:
    """Everything the child process needs; plain values so it pickles across ``spawn``."""

    source: str
    store_root: str
    precision: str | None = None  # None: the kind's own (layout.py) or ``vision_precision``; for from_ir the IR's
    vision_precision: str | None = None  # a vision model's when none is asked (the bot's PRECISION setting)
    from_ir: bool = False
    activate: bool = False
    validate: bool = True
    device: str = "CPU"
    group_size: int = INT4_GROUP_SIZE
    ratio: float = INT4_RATIO
    revision: str | None = None  # a Hub repository's commit, branch or tag; None: the default branch's latest
    trust_remote_code: bool = False  # the admin confirmed running the code of a repository nobody vouched for
    # The commit of each repository the checkpoint's configuration names, as confirmed (pins.py); one missing is
    # read at its latest commit, which a confirmed conversion refuses.
    named_revisions: dict[str, str] = field(default_factory=dict)
    hf_token: str | None = field(default=None, repr=False)  # for the Hub's look-ups and downloads only
    hub_timeout: float = 30.0  # seconds any Hub request may wait for a connection or a byte


def _checkpoint_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for pattern in ("*.safetensors", "*.bin") for p in directory.glob(pattern))


def _check_checkpoint(directory: Path) -> ModelKind:
    kind = kind_of(read_json(directory / "config.json"), directory / "config.json")
    if _checkpoint_bytes(directory) == 0:
        raise MissingModelError("no_weights", directory=str(directory))
    return kind


def _precision(request: ConversionRequest, kind: ModelKind) -> str:
    """The one asked for, else the configured one for a vision model, else the kind's own; INT4 only where the
    kind has a part it suits."""
    configured = request.vision_precision if kind is VISION else None
    precision = parse_precision(request.precision or configured or kind.default_precision)
    if precision == "int4" and kind.int4_part is None:
        raise CorruptModelError("no_int4", kind=kind.name)
    return precision


def _manifest(source: ModelSource, precision: str, files: Path, **extra: Any) -> dict[str, Any]:
    """``files``: where the model's side files are; a synthetic.json there marks a synthetic model."""
    synthetic = (files / "synthetic.json").is_file()
    return {
        "source": source.display,
        "precision": precision,
        "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "synthetic": synthetic,
        **extra,
    }


def _pinned(found: pins.Pins) -> dict[str, Any]:
    """What a manifest records of the commits converted: the checkpoint's, and every repository's."""
    revision = {"revision": found.checkpoint.revision} if found.checkpoint else {}
    return {**revision, "pinned": found.revisions} if found.revisions else revision


def _require_confirmation(request: ConversionRequest, source: ModelSource, found: pins.Pins, kind: ModelKind) -> None:
    """A repository nobody vouched for runs its code only when confirmed, and a confirmation covers the
    repositories its configuration names only at the commits it gave (``named_revisions``).  A kind whose export
    runs no code of the checkpoint's (Whisper: transformers' own) needs none."""
    unconfirmed = [other for other in found.named if other.repo_id not in request.named_revisions]
    if not kind.runs_code or source.vouched_for or (request.trust_remote_code and not unconfirmed):
        return
    assert found.checkpoint is not None
    named = [(other.repo_id, other.revision) for other in found.named]
    raise UntrustedCodeError(
        "untrusted", repo=found.checkpoint.repo_id, revision=found.checkpoint.revision, named=named
    )


def _convert_checkpoint(request: ConversionRequest, store: ModelStore, staging: Path, plan: PhasePlan) -> ModelEntry:
    require_conversion_extra()
    from model_store.convert.export import compress, export_checkpoint

    source = parse_source(request.source)
    plan.report("check", 0.0, f"checking {source.display}")
    local = source.local_dir
    if local is not None:
        _check_checkpoint(local)
    found = pins.resolve(source, request.revision, request.named_revisions, request.hf_token)
    kind = kind_of(found.config, Path(source.display) / "config.json")
    precision = _precision(request, kind)
    _require_confirmation(request, source, found, kind)
    if found.checkpoint is None:
        assert local is not None
        checkpoint_bytes, download_bytes = _checkpoint_bytes(local), 0
    else:
        checkpoint_bytes = download_bytes = found.checkpoint.size
    stored = DTYPE_BYTES.get(str(found.config.get("torch_dtype", "bfloat16")), 2)
    preflight.check(preflight.estimate(checkpoint_bytes, stored, precision, download_bytes), store.root)

    if found.checkpoint is None:
        assert local is not None
        checkpoint = local
    else:
        checkpoint = hub.download(
            found.checkpoint, hub.CHECKPOINT_PATTERNS, lambda f, d: plan.report("download", f, d), request.hf_token
        )
        _check_checkpoint(checkpoint)
    named = {other.repo_id: hub.download(other, hub.CONFIG_PATTERNS, token=request.hf_token) for other in found.named}
    plan.report("export", 0.0, "loading the checkpoint")
    view = store.new_staging_dir()
    try:
        export_checkpoint(
            pins.stage(checkpoint, named, view), staging, precision, kind, lambda f, d: plan.report("export", f, d)
        )
    finally:
        shutil.rmtree(view, ignore_errors=True)
    plan.report("compress", 0.0, f"compressing weights to {precision}")
    compress(
        staging,
        precision,
        kind,
        lambda f, d: plan.report("compress", f, d),
        group_size=request.group_size,
        ratio=request.ratio,
    )
    compression = (
        {"mode": "INT4_SYM", "group_size": request.group_size, "ratio": request.ratio, "backup": "INT8_ASYM"}
        if precision == "int4"
        else {"mode": "INT8_ASYM"}
        if precision == "int8"
        else {"mode": precision.upper()}
    )
    return _validate_and_install(
        request,
        store,
        staging,
        source,
        precision,
        plan,
        _manifest(source, precision, checkpoint, kind=kind.name, compression=compression, **_pinned(found)),
    )


def _take_ir(request: ConversionRequest, store: ModelStore, staging: Path, plan: PhasePlan) -> ModelEntry:
    source = parse_source(request.source)
    plan.report("check", 0.0, f"checking {source.display}")
    revision: dict[str, str] = {}
    if source.local_dir is not None:
        origin = source.local_dir
        kind = check_ir_directory(origin)
        size = sum(p.stat().st_size for p in origin.iterdir() if p.is_file())
        preflight.check(preflight.Requirements(disk_bytes=size + preflight.DISK_MARGIN, memory_bytes=0), store.root)
    else:
        assert source.repo_id is not None
        pinned = hub.snapshot(source.repo_id, hub.IR_PATTERNS, request.revision, request.hf_token)
        disk = 2 * pinned.size + preflight.DISK_MARGIN
        preflight.check(preflight.Requirements(disk_bytes=disk, memory_bytes=0), store.root)
        origin = hub.download(pinned, hub.IR_PATTERNS, lambda f, d: plan.report("download", f, d), request.hf_token)
        kind = check_ir_directory(origin)
        revision["revision"] = pinned.revision
    plan.report("copy", 0.0, "copying the model into the store")
    for item in origin.iterdir():
        if item.is_file():
            shutil.copyfile(item, staging / item.name)
    precision = parse_precision(request.precision) if request.precision else detect_weight_precision(staging, kind)
    plan.report("copy", 1.0, "copied")
    manifest = _manifest(source, precision, staging, kind=kind.name, from_ir=True, **revision)
    return _validate_and_install(request, store, staging, source, precision, plan, manifest)


def _validate_and_install(
    request: ConversionRequest,
    store: ModelStore,
    staging: Path,
    source: ModelSource,
    precision: str,
    plan: PhasePlan,
    manifest: dict[str, Any],
) -> ModelEntry:
    if request.validate:
        plan.report("validate", 0.0, "loading the new model and trying it")
        manifest["validation"] = validate_model(staging, request.device)
    plan.report("install", 0.0, "switching to the new model")
    entry = store.install(staging, source.slug, precision, manifest)
    if request.activate:
        store.set_active(entry)
    plan.report("install", 1.0, "done")
    return entry


def _phases(request: ConversionRequest) -> list[tuple[str, float]]:
    """Phase weights roughly follow measured durations; a local source has nothing to download."""
    remote = parse_source(request.source).repo_id is not None
    download = [("download", 40 if request.from_ir else 30)] if remote else []
    work = [("copy", 5)] if request.from_ir else [("export", 40), ("compress", 20)]
    validate = [("validate", 8)] if request.validate else []
    return [("check", 1), *download, *work, *validate, ("install", 1)]


def run_conversion(request: ConversionRequest, progress: ProgressCallback = ignore_progress) -> ModelEntry:
    """Convert (or take) a model into the store, in this process; see process.py for the isolated variant."""
    store = ModelStore(Path(request.store_root))
    plan = PhasePlan(_phases(request), progress)
    hub.limit_waits(request.hub_timeout)
    with store.conversion_lock():
        staging = store.new_staging_dir()
        try:
            if request.from_ir:
                entry = _take_ir(request, store, staging, plan)
            else:
                entry = _convert_checkpoint(request, store, staging, plan)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log.info("model ready: %s (%s) at %s", entry.source, entry.precision, entry.path)
    return entry
