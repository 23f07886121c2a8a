"""The ``phi3bot`` command: run the bot, convert models, serve the model, check its health, back up its history.

Exit codes: 0 success, 1 a model-store error (message printed), 2 bad configuration or arguments (also
``synthetic`` outside a development install, ``serve`` without the ``[serve]`` extra; for ``run`` also any reason
it cannot start: a rejected token, a Bot API server that fails, an unusable directory or history database, a
webhook port in use), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bot import texts
from bot.running.secrecy import keep_allowed_environment, make_undumpable
from bot.settings import Settings, SettingsError, load_settings
from bot.terminal.progress import TerminalProgress
from model_store.errors import ConversionInterruptedError, ModelStoreError
from model_store.sources import INT4_GROUP_SIZE, INT4_RATIO, PRECISIONS

# What phi3bot writes (the history, its WAL, backups, stored photos, the heartbeat, models) is its user's alone.
PRIVATE_UMASK = 0o077
# ``phi3bot synthetic`` where devkit/ is not importable (``pip install phi3bot``, the Docker images).
WHISPER_SIZES = ("tiny", "base", "small")  # devkit/synthetic/whisper.py's
SYNTHETIC_NEEDS_DEVKIT = "phi3bot synthetic needs a development install: `make install` in a clone of the repository."
SERVE_NEEDS_EXTRA = "phi3bot serve needs the service's extra: pip install 'phi3bot[serve]' (make install has it)."

log = logging.getLogger("phi3bot")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi3bot", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("run", help="start the Telegram bot (settings from the environment and .env)")

    convert = commands.add_parser(
        "convert", help="convert a Phi-3-vision (or, for voice messages, Whisper) checkpoint into the model store"
    )
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="Hugging Face id (microsoft/Phi-3.5-vision-instruct) or checkpoint directory")
    source.add_argument("--from-ir", metavar="REPO_OR_DIR", help="take an already converted OpenVINO model")
    convert.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="weight format (default: int4 for Phi-3-vision, int8 for Whisper; detected for --from-ir)",
    )
    convert.add_argument(
        "--group-size", type=int, default=INT4_GROUP_SIZE, help=f"INT4 group size (default {INT4_GROUP_SIZE})"
    )
    convert.add_argument(
        "--ratio", type=float, default=INT4_RATIO, help=f"share of layers in INT4, the rest INT8 (default {INT4_RATIO})"
    )
    convert.add_argument("--revision", help="a Hub repository's commit, branch or tag (default: its latest commit)")
    convert.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="convert a Hub repository other than Microsoft's Phi-3-vision ones, running the Python code it ships",
    )
    convert.add_argument(
        "--pin",
        action="append",
        default=[],
        type=_pin,
        metavar="REPO@COMMIT",
        help="the commit to read of a repository the checkpoint's configuration names (its CLIP vision tower)",
    )
    convert.add_argument("--no-activate", action="store_true", help="do not make the bot use the new model")
    convert.add_argument("--no-validate", action="store_true", help="skip the test generation (not recommended)")

    commands.add_parser("models", help="list the converted models and the one in use")

    serve = commands.add_parser(
        "serve", help="serve the model to bots on other machines (Ray Serve; the OpenAI chat-completions protocol)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--replicas", type=int, default=1, help="model replicas, each a model process (default 1)")
    serve.add_argument(
        "--replica-cpus", type=float, default=1.0, help="Ray CPUs each replica reserves (placement only; default 1)"
    )

    export = commands.add_parser(
        "export-ovms", help="lay out the model as OpenVINO Model Server serves it (its model repository)"
    )
    export.add_argument("repository", type=Path, help="the OVMS model repository to write to (made if missing)")
    export.add_argument("--name", help="the servable's name (default: MODEL, which the bot asks for)")

    commands.add_parser("health", help="exit 0 if a running bot wrote its heartbeat lately (for health checks)")

    backup = commands.add_parser("backup", help="copy the history database consistently, also while the bot runs")
    backup.add_argument("destination", type=Path, help="a new file, e.g. backup-2026-11-25.sqlite3")

    ask = commands.add_parser("ask", help="answer one question about an image in the terminal")
    ask.add_argument("image", type=Path, help="a photo (JPEG, PNG, WebP, ...)")
    ask.add_argument("question", nargs="?", default="", help='what to ask (default: "Describe this image.")')

    chat = commands.add_parser("chat", help="a small chat in the terminal, with the same engine as the bot")
    chat.add_argument("image", type=Path, nargs="?", help="a photo to start with")

    synthetic = commands.add_parser(
        "synthetic",
        help="build a random-weight Phi-3-vision or Whisper checkpoint (tests, benchmarks; a development install)",
    )
    synthetic.add_argument("size", choices=("tiny", "full", *(f"whisper-{size}" for size in WHISPER_SIZES)))
    synthetic.add_argument("directory", type=Path)
    synthetic.add_argument("--seed", type=int, default=0)
    return parser


def _pin(value: str) -> tuple[str, str]:
    repo_id, _, commit = value.rpartition("@")
    if not repo_id or not commit:
        raise argparse.ArgumentTypeError(f"expected REPO@COMMIT (openai/clip-vit-large-patch14-336@1a2b3c4): {value!r}")
    return repo_id, commit


def _convert(args: argparse.Namespace, settings: Settings) -> int:
    from bot.app import install_redaction
    from model_store.convert import ConversionRequest, convert_in_subprocess
    from model_store.convert.extra import require_conversion_extra

    install_redaction(settings.hub_token or "")  # the bot does the same for its own logs (bot/app.py)

    if not args.from_ir:
        require_conversion_extra()
    request = ConversionRequest(
        source=args.model or args.from_ir,
        store_root=str(settings.store_dir),
        precision=args.precision,
        from_ir=bool(args.from_ir),
        activate=not args.no_activate,
        validate=not args.no_validate,
        device=settings.device,
        group_size=args.group_size,
        ratio=args.ratio,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        named_revisions=dict(args.pin),
        hf_token=settings.hub_token,
        hub_timeout=settings.hub_timeout_seconds,
    )
    entry = convert_in_subprocess(request, TerminalProgress())
    revision = f" at revision {entry.revision}" if entry.revision else ""
    print(f"Converted {entry.source}{revision} ({entry.precision}) into {entry.path}")
    if request.activate and entry.kind == "speech":
        print("It is now the store's speech model, for voice messages.")
    elif request.activate:
        print("The bot will use this model (a running bot switches at once after /convert; otherwise on restart).")
    return 0


def _models(settings: Settings) -> int:
    from model_store.layout import KINDS
    from model_store.store import ModelStore

    store = ModelStore(settings.store_dir)
    entries = store.entries()
    if not entries:
        print(f"No converted models in {settings.store_dir}. Try: phi3bot convert --model {settings.model}")
        return 0
    chosen = {kind.name: store.active(kind.name) for kind in KINDS}
    for entry in entries:
        active = chosen[entry.kind]
        mark = "*" if active and (active.slug, active.precision) == (entry.slug, entry.precision) else " "
        note = " (synthetic)" if entry.synthetic else ""
        size = entry.size_bytes / 1e9
        print(f"{mark} {entry.kind:6} {entry.source:45} {entry.precision:5} {size:6.2f} GB{note}")
    return 0


def _export_ovms(args: argparse.Namespace, settings: Settings) -> int:
    """With the bot's own settings (NUM_CROPS, KV_CACHE_GB, BATCH_SIZE, DEVICE, the CPU options)."""
    from bot.running.runtime import model_choice
    from model_store.ovms_export import export_for_ovms

    name = args.name or settings.model
    entry, path = export_for_ovms(model_choice(settings), args.repository, name=name, max_num_seqs=settings.batch_size)
    print(texts.ovms_exported(entry.source, entry.precision, str(path), str(args.repository), name))
    return 0


def _health(settings: Settings) -> int:
    from bot.running.health import check_heartbeat

    healthy, reason = check_heartbeat(settings.heartbeat_path)
    print(reason)
    return 0 if healthy else 1


def _backup(settings: Settings, destination: Path) -> int:
    """SQLite's online backup copies a consistent snapshot even while the bot writes (copying the file of a
    WAL database can miss what is still in the WAL)."""
    import sqlite3
    from contextlib import closing

    source = settings.database_path
    assert source is not None
    if not source.is_file():
        raise FileNotFoundError(f"There is no history database at {source} (check DATA_DIR or DATABASE_PATH).")
    if destination.exists():
        raise FileExistsError(f"{destination} exists already; choose a new file name.")
    with closing(sqlite3.connect(source)) as origin, closing(sqlite3.connect(destination)) as copy:
        origin.backup(copy)
    print(f"Backed up {source} to {destination} ({destination.stat().st_size / 1e6:.1f} MB)")
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    """The builder is development's (devkit/, next to bot/ in a clone), which the installed package leaves out."""
    try:
        from devkit.synthetic import build_synthetic_checkpoint, build_synthetic_whisper
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != "devkit":
            raise
        print(SYNTHETIC_NEEDS_DEVKIT, file=sys.stderr)
        return 2
    if args.size.startswith("whisper-"):
        build_synthetic_whisper(args.directory, args.size.removeprefix("whisper-"), seed=args.seed)
        print(f"Built a synthetic {args.size} checkpoint in {args.directory}")
        return 0
    build_synthetic_checkpoint(args.directory, args.size, seed=args.seed, progress=TerminalProgress())
    print(f"Built a synthetic {args.size} Phi-3-vision checkpoint in {args.directory}")
    return 0


def _terminal(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from bot.media.decoding import ImageRejected
    from bot.terminal.chat import ask_once, chat

    try:
        if args.command == "ask":
            return asyncio.run(ask_once(settings, args.image, args.question))
        return asyncio.run(chat(settings, args.image))
    except ImageRejected as error:
        print(f"Error: {texts.refusal(error.reason, error.data)}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """The model and generation settings are the bot's own (the same .env works on both machines)."""
    try:
        from service.deployment import ReplicaModel, run
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] not in ("ray", "fastapi", "starlette", "uvicorn"):
            raise
        print(SERVE_NEEDS_EXTRA, file=sys.stderr)
        return 2
    from bot.app import install_redaction
    from bot.running.runtime import generation_settings, model_choice
    from model_store.loader import select_entry
    from model_store.store import ModelStore

    select_entry(ModelStore(settings.store_dir), settings.model, settings.precision)  # a model to serve, before Ray
    key = settings.service_api_key.get_secret_value() if settings.service_api_key is not None else None
    install_redaction(key or "")
    model = ReplicaModel(
        model_choice(settings),
        generation_settings(settings),
        queue_max=settings.queue_max,
        batch_max=settings.batch_size,
        history_tokens=settings.history_tokens,
    )
    if key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without SERVICE_API_KEY: anyone who reaches the port may ask", args.host)
    run(model, replicas=args.replicas, host=args.host, port=args.port, replica_cpus=args.replica_cpus, api_key=key)
    return 0


def _run(settings: Settings) -> int:
    from bot.app import run_bot

    return run_bot(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Every command reads the settings, the secrets with them (.env is read whole), so every one keeps them
    in (bot/running/secrecy.py); a child process spawned by this one imports this module first: it starts no thread."""
    make_undumpable()
    os.umask(PRIVATE_UMASK)
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    keep_allowed_environment(also=("RAY_",) if args.command == "serve" else ())
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "convert":
            return _convert(args, settings)
        if args.command == "models":
            return _models(settings)
        if args.command == "export-ovms":
            return _export_ovms(args, settings)
        if args.command == "health":
            return _health(settings)
        if args.command == "backup":
            return _backup(settings, args.destination)
        if args.command == "synthetic":
            return _synthetic(args)
        if args.command in ("ask", "chat"):
            return _terminal(args, settings)
        if args.command == "serve":
            return _serve(args, settings)
        return _run(settings)
    except ConversionInterruptedError as error:
        print(f"\n{texts.store_error(error.reason, error.data)}", file=sys.stderr)
        return 130
    except ModelStoreError as error:
        print(f"\nError: {texts.store_error(error.reason, error.data)}", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"\nError: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
