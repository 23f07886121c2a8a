"""Everything the bot says that is not the model's answer, in one place."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from model_store.progress import format_elapsed

if TYPE_CHECKING:
    from bot.admission.refusals import RefusalCounts
    from bot.history.store import StoreStats
    from engine.engine import EngineStats, Serving
    from engine.fair_queue import FairQueue
    from model_store.progress import Progress
    from model_store.store import ModelEntry

HELP = """I answer questions about photos, running {model} on this server's {device}.

• Send a photo with a question as its caption.
• Or send the photo first: I look at it while you type your question (tap Describe for a description).
• Then just keep asking — follow-up questions are about the same photo, however long we talk.
• Reply to a photo with a question to ask about that one.
• Albums: I look at all the photos together. Images sent as files work too.
• PDFs: I read the pages your question names ("what does page 3 say?"), otherwise the first ones.
• Videos, GIFs and video messages: I look at a few frames spread over the clip.

Commands:
/reset — forget this chat's conversation (its persona stays)
/stop — stop the answer being written
/retry — answer your last question again (or tap 🔁 under the answer)
/persona — show how I'm told to behave here; /persona TEXT changes it, /persona reset goes back to the default
/model — which model is running and how busy it is
/help — this message

In groups, mention me or reply to me."""

ADMIN_HELP = """
Admin:
/convert [model] [int4|int8|fp16] — convert and switch the model (e.g. /convert microsoft/Phi-3.5-vision-instruct int4)
/stats — usage and load"""

COMMANDS = [
    ("help", "How to use this bot"),
    ("reset", "Forget this conversation"),
    ("stop", "Stop the current answer"),
    ("retry", "Answer the last question again"),
    ("persona", "Show or set how the bot behaves in this chat"),
    ("model", "Which model is running"),
]

DESCRIBE = "Describe this image."
SUMMARISE_PAGES = "What do these pages say?"
DESCRIBE_CLIP = "What happens in this clip?"
DESCRIBE_BUTTON = "🖼 Describe it"
STOP_BUTTON = "⏹ Stop"
CANCEL_BUTTON = "Cancel"
BUTTON_EXPIRED = "This button has expired."
NOT_ALLOWED = "Sorry, this is a private bot. Ask its owner to add you."
TOO_FAST = "You're sending questions faster than I can answer. Please wait a minute and try again."
STILL_ANSWERING = "I'm still answering your previous question. Send /stop to cancel it."
BUSY = "I'm very busy right now. Please try again in a few minutes."
BUSY_HERE = "I have several questions from this chat in line already. Please ask again once I've answered them."
UNKNOWN_COMMAND = "I don't know that command. Send /help to see what I can do."
NO_MODEL = "No model is loaded yet. An admin can set one up with /convert."
PLACEHOLDER = "…"
INTERRUPTED = "\n\n⚠️ Interrupted: the bot restarted. Ask again for a full answer."
THINKING = "✍️ Looking at it…"
EMPTY = "Please send a photo, or a question about one."
RESET_DONE = "Done — I've forgotten this conversation."
NOTHING_TO_STOP = "There's nothing to stop."
STOPPING = "Stopping."
ADMINS_ONLY = "Only the bot's admins can do that."
ASKER_ONLY = "Only the person who asked can stop this answer."
GROUP_ADMINS_ONLY = "Only this group's administrators can reset its conversation."
FAILED = "Sorry, something went wrong while answering. Please try again."
NO_ANSWER = "The model gave no answer. Please try again, perhaps in other words."
# Voice questions (bot/handlers/questions.py, bot/answers/answer_stream.py)
LISTENING = "🎤 Listening…"
NOT_HEARD = "🎤 I couldn't make out any words in that recording. Please try again, or type your question."
NO_SPEECH_MODEL = (
    "I can't listen to voice messages yet: no speech model is installed. An admin can add one with "
    "/convert openai/whisper-base. Meanwhile, please type your question."
)
NO_SPEECH_HERE = (
    "I can't listen to voice messages here: my model runs on a model service, which takes typed questions only. "
    "Please type your question."
)
CONVERSION_CANCELLED = "Conversion cancelled."
CONFIRMATION_EXPIRED = "That question has expired. Send /convert again."
CONVERSION_RUNNING = "A conversion is already running; its message shows the progress."
CONVERT_ON_THE_SERVICE = (
    "This bot asks a model service on another machine (MODEL_SERVICE_URL), so a model converted here would not be "
    "served. Convert it on the service's machine (phi3bot convert) and restart phi3bot serve there."
)
RETRY_BUTTON = "🔁 Retry"
NOTHING_TO_RETRY = "There's no answer to retry yet."
RETRY_KEPT = "There's no answer to retry yet: ask me something about what you sent, or tap Describe."
ONLY_LATEST = "Only the latest answer can be retried."
RETRY_ASKER_ONLY = "Only the person who asked can retry this answer."
RETRY_RUNNING = "I'm still writing the answer. Retry once it's done, or send /stop first."
PERSONA_ADMINS_ONLY = "Only this group's administrators can change its persona."
PERSONA_RESET = "Done — I'm back to my default persona. The conversation goes on."
PERSONA_SET = "Done — that's my persona in this chat from now on. The conversation goes on; /persona reset undoes it."
PERSONA_KEPT = "\n\nThe persona stays: /persona reset returns to the default."
RESTARTING = "I'm restarting right now. Please ask again in a minute."
NOT_STORED = "Sorry, I can't answer right now: this server could not save your question. Please try again later."
# Stored images are deleted, oldest first, past STORED_IMAGES_PER_CHAT and STORED_IMAGES_MB
IMAGE_GONE = (
    "I no longer have the photo this conversation is about: older images are deleted to save space. "
    "Please send it again, or reply to it with your question."
)
IMAGE_GONE_NOTE = (
    "📷 I no longer have the photo before this (older images are deleted to save space): send it again, or reply "
    "to it, to ask about it."
)


def images_gone(count: int) -> str:
    """For the model, in place of a question's images that are no longer stored."""
    if count == 1:
        return "[An image was shown here; it is no longer stored, so you cannot see it.]"
    return f"[{count} images were shown here; they are no longer stored, so you cannot see them.]"


# Why a question could not have its conversation (bot/admission/answers_in_progress.py NotClaimed; "withdrawn" says
# nothing: the asker's /stop was answered already).
NOT_CLAIMED = {"own": STILL_ANSWERING, "full": BUSY_HERE}


def help_text(running: tuple[str, str] | None, *, admin: bool) -> str:
    """``running``: the model and the device serving now, or None before a model is loaded."""
    model, device = running if running is not None else ("a Phi-3-vision model (none is loaded yet)", "CPU")
    where = "own CPU" if device == "CPU" else f"own hardware (OpenVINO device {device})"
    return HELP.format(model=model, device=where) + (ADMIN_HELP if admin else "")


def waiting_here(place: int) -> str:
    """A group member who asked while another member's answer is written."""
    return f"⏳ You're #{place} here: I'll answer you as soon as I've finished the answer before yours."


def too_many_images(limit: int, sent: int) -> str:
    return f"I can look at up to {limit} images per question; you sent {sent}."


def trust_remote_code(repo_id: str, revision: str, named: Sequence[tuple[str, str]] = ()) -> str:
    """``named``: the repositories (and their commits) the checkpoint's configuration makes the conversion read."""
    also = "".join(
        f"It also reads the configuration of {other} (its image processor; no code from it runs).\n"
        f"Revision: {commit}\n\n"
        for other, commit in named
    )
    return (
        f"⚠️ {repo_id} is not one of the known Phi-3-vision repositories. Converting it runs the Python code it "
        f"ships on this server (kept to the conversion's own files where Linux allows).\n\nRevision: {revision}\n"
        f"Read its code first: https://huggingface.co/{repo_id}/tree/{revision}\n\n{also}"
        f"Only {'these revisions are' if named else 'that revision is'} converted, whatever the "
        f"{'repositories hold' if named else 'repository holds'} later, and nothing else is downloaded."
    )


def hub_too_slow(seconds: float) -> str:
    return (
        f"❌ The Hugging Face Hub took longer than {seconds:g} s to answer. Try again later (HUB_TIMEOUT_SECONDS "
        "sets how long I wait)."
    )


def trust_button(repo_id: str, revision: str) -> str:
    return f"Run its code and convert {repo_id}@{revision[:7]}"


def photos_kept(count: int) -> str:
    if count == 1:
        return "📷 Got it. I'm looking at it — ask me anything about this photo."
    return f"📷 Got your {count} photos. I'm looking at them — ask me anything about them."


# A wait shorter than this is shown without a number: "about 1 s" tells the user nothing, and a text follow-up's
# second or two is mostly fixed costs that move with the machine's load (README, "Time estimates").
SAID_FROM_SECONDS = 5.0


def said(seconds: float | None) -> bool:
    """Whether an estimate is worth a number in the status."""
    return seconds is not None and seconds >= SAID_FROM_SECONDS


def about(seconds: float) -> str:
    """An estimate as a person says it: whole seconds, minutes past a minute and a half."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {round(seconds / 60)} min"


def waiting(position: int, seconds: float | None = None) -> str:
    """``seconds``: until the answer's first words, once the bot has measured its speed."""
    if seconds is None or not said(seconds):
        return f"⏳ You're #{position} in line."
    return f"⏳ You're #{position} in line, {about(seconds)}."


def looking(images: int, seconds: float | None = None, label: str = "") -> str:
    """While the model encodes the question's photos and reads it: what it does and how long until it answers.
    ``label``: what the images are when they are not photos ("pages 1-4 of your PDF")."""
    if label:
        doing = f"👀 Looking at {label}…"
    elif images == 0:
        doing = THINKING
    else:
        doing = "👀 Looking at your photo…" if images == 1 else f"👀 Looking at your {images} photos…"
    return f"{doing} {about(seconds)}" if seconds is not None and said(seconds) else doing


def kept(label: str) -> str:
    """A PDF or a clip sent without a question: what the model is reading of it."""
    return f"📎 Got it. I'm looking at {label} — ask me anything about it."


def pages_not_in_view(shown: str, count: int) -> str:
    """A question naming pages of the PDF in view that the model was not shown."""
    return (
        f"I only have {shown} of that {count}-page PDF in view. To ask about other pages, reply to the PDF "
        "with your question naming them."
    )


# Media the bot cannot read (bot/media/intake.py's unsupported_kind), as the reply names it.
UNSUPPORTED = {
    "animated_sticker": "animated stickers",
    "location": "locations",
    "contact": "contacts",
    "poll": "polls",
    "file": "this kind of file",
}


def unsupported(kind: str) -> str:
    return f"I can't read {UNSUPPORTED[kind]}. Send me a photo, a PDF or a short video with a question."


HEARD_SHOWN = 1500  # characters of a transcript shown above its answer: the answer must fit beside it


def heard(transcript: str) -> str:
    """Above the answer to a question asked aloud: what the bot heard, so a misheard question is plain to see."""
    shown = transcript if len(transcript) <= HEARD_SHOWN else transcript[: HEARD_SHOWN - 1].rstrip() + "…"
    return f"🎤 {shown}\n\n"


def footer(status: str, text: str, note: str = "") -> str:
    """The note under an answer that ended with ``status``; one that failed without a word says so.
    ``note``: which pages or frames of a PDF or clip the answer is about."""
    if status == "failed" and not text.strip():
        ending = "\n\n⚠️ " + NO_ANSWER
    else:
        ending = {
            "cancelled": "\n\n⏹ Stopped.",
            "timeout": "\n\n⏱ Stopped: this answer took too long.",
            "failed": "\n\n⚠️ " + FAILED,
        }.get(status, "")
    return f"\n\n{note}{ending}" if note else ending


def persona_shown(persona: str | None, default: str) -> str:
    """What /persona says: the chat's own persona, or the default one."""
    if persona is not None:
        return f"This chat's persona:\n\n{persona}\n\nChange it with /persona TEXT, or /persona reset for the default."
    if default:
        return f"This chat uses the default persona:\n\n{default}\n\nGive it its own with /persona TEXT."
    return "This chat has no persona. Give it one with /persona TEXT."


def persona_too_long(length: int, limit: int) -> str:
    return f"A persona can be up to {limit:,} characters; yours has {length:,}. Please shorten it."


def clock(seconds: float, *, tenths: bool = False) -> str:
    """0:07, 1:30, 1:02:03, or 2.5 s for a clip under ten seconds (``tenths``)."""
    if tenths and seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def looked_at(pdf: bool, which: str, whole: str) -> str:
    """Under an answer about a PDF or a clip: which pages or frames, of what (bot/media/material.py)."""
    return f"{'📄' if pdf else '🎞'} I looked at {which} of {whole}."


def no_such_page(count: int, page: int) -> str:
    return f"This PDF has {count} page{'' if count == 1 else 's'}, so I can't look at page {page}."


def _too_long(duration: float, max_seconds: float, name: str = "clip") -> str:
    return f"That {name} is {clock(duration)} long; I can look at clips of up to {clock(max_seconds)}."


# Why a file cannot be read (bot/media/refusal.py): each reason a Refusal carries, said with its data, as a template
# or, where the data needs more than filling in, a function.
SUPPORTED_IMAGES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
TOO_LARGE_TO_OPEN = "That image is too large to open safely. Please send a smaller one."
CLIP_UNREADABLE = "I couldn't read that clip; it seems damaged or in a format I don't know."
NOT_DOWNLOADED = "I could not download that file from Telegram. Please send it again."
REFUSALS: dict[str, str | Callable[..., str]] = {
    # an image (bot/media/decoding.py)
    "empty": "That file is empty. Please send the photo again.",
    "too_large_bytes": "That image is larger than {megabytes} MB. Please send a smaller one.",
    "too_small": "That image has no pixels. Please send another one.",
    "too_many_pixels": (
        "That image is too large ({width}x{height} pixels). Please send one under {megapixels} megapixels."
    ),
    "bomb": TOO_LARGE_TO_OPEN,
    "out_of_memory": TOO_LARGE_TO_OPEN,
    "not_an_image": f"That file is not an image I can read. Please send a {SUPPORTED_IMAGES} photo.",
    "truncated": "That image seems damaged or incomplete. Please send it again.",
    # a PDF (bot/media/pages.py)
    "no_such_page": no_such_page,
    "pdf_password": "That PDF is protected by a password, so I can't open it. Please send it without one.",
    "pdf_damaged": "I couldn't read that PDF; it seems damaged. Please send it again.",
    "pdf_empty": "That PDF has no pages.",
    "pdf_unrendered": "I couldn't render that PDF's pages; it seems damaged.",
    "page_without_size": "Page {page} of that PDF has no size, so there is nothing to look at.",
    # a clip (bot/media/frames.py; intake.py refuses a clip Telegram announces as too long, naming it)
    "no_pictures": "That file has no pictures in it, so there is nothing for me to look at.",
    "clip_unreadable": CLIP_UNREADABLE,
    "frames_too_large": "That clip's frames are {width}×{height} pixels, too large for me to read.",
    "too_long": _too_long,
    "no_frames": "I couldn't find a single picture in that clip.",
    # a voice message or an audio file (bot/media/sound.py)
    "no_sound": "I couldn't hear anything in that file: it holds no sound.",
    "sound_unreadable": "I couldn't read that recording; it seems damaged or in a format I don't know.",
    "sound_too_long": lambda duration, max_seconds: (
        f"That recording is {clock(duration)} long; I can listen to up to {clock(max_seconds)}."
    ),
    "silent": "That recording is silent, so there is no question in it for me to hear.",
    # what Telegram announces or gives (bot/media/intake.py)
    "announced_too_large": "That {name}'s frames are too large for me to read.",
    "too_big": "That file is larger than 20 MB, which is as much as Telegram lets bots download.",
    "not_downloaded": NOT_DOWNLOADED,
    "one_at_a_time": "Please send the {name} on its own: I can read one PDF, clip or recording per question.",
    # the file reader (bot/media/reader.py)
    "too_slow": (
        "That file takes too long to read (over {seconds:.0f} s), so I gave up on it. Please send a simpler one."
    ),
    "crashed": "I couldn't read that file: the reader stopped on it. Please send it in another form.",
    "too_large": "That file needs more memory to read than I may use. Please send a smaller one.",
    "stopping": "I'm restarting, so I couldn't read that file. Please send it again in a minute.",
}


def _said(sentences: Mapping[str, str | Callable[..., str]], reason: str, data: Mapping[str, object]) -> str:
    """``reason``'s sentence with ``data`` in it; raises KeyError, TypeError or ValueError for a reason or data it
    has no sentence for."""
    sentence = sentences[reason]
    return sentence.format(**data) if isinstance(sentence, str) else sentence(**data)


def refusal(reason: str, data: Mapping[str, object]) -> str:
    """Why a file cannot be read, for the person who sent it."""
    return _said(REFUSALS, reason, data)


def ended(exitcode: int | None) -> str:
    """How a child process ended: a kill by signal 9 is usually the out-of-memory killer."""
    if exitcode is not None and exitcode < 0:
        hint = " (the system may have run out of memory)" if exitcode == -9 else ""
        return f"was killed by signal {-exitcode}{hint}"
    return f"exited unexpectedly (code {exitcode})"


def _repository(repo: str, revision: str | None = None) -> str:
    return f"{repo} at revision {revision}" if revision else repo


def _hub_silent(repo: str, revision: str | None = None, seconds: float | None = None) -> str:
    waited = f" within {seconds:g} s" if seconds is not None else ""
    return (
        f"The Hugging Face Hub did not answer{waited} about {_repository(repo, revision)}. Try again later "
        "(HUB_TIMEOUT_SECONDS sets how long to wait), or pass a local checkpoint directory instead."
    )


def _download_incomplete(repo: str, missing: Sequence[str]) -> str:
    more = f" with {len(missing) - 1} more" if len(missing) > 1 else ""
    return (
        f"Could not get every file of {repo} from the Hugging Face Hub ({missing[0]} is missing{more}). Check the "
        "network and try again."
    )


def _untrusted(repo: str, revision: str, named: Sequence[tuple[str, str]] = ()) -> str:
    """What converting a repository nobody vouched for means, and how to confirm exactly these commits from the
    terminal (the bot asks with a button instead: trust_remote_code)."""
    also = "".join(f" --pin {other}@{commit}" for other, commit in named)
    reads = "".join(f" It also reads the configuration of {other} at {commit}." for other, commit in named)
    return (
        f"{repo} is not one of the known Phi-3-vision repositories, and converting it runs the Python code it "
        f"ships on this machine. Read that code at https://huggingface.co/{repo}/tree/{revision}.{reads} If you "
        f"trust it, convert exactly these revisions with: phi3bot convert --model {repo} --revision {revision} "
        f"--trust-remote-code{also}"
    )


def _not_converted(model: str, precision: str, root: str, available: Sequence[tuple[str, str]]) -> str:
    listed = ", ".join(f"{source} ({converted})" for source, converted in available) or "none"
    return (
        f"No converted model for {model} in {precision} in {root} (available: {listed}). "
        f"Convert it with `phi3bot convert --model {model} --precision {precision}`, or ask the bot with /convert."
    )


def _not_loaded(source: str, precision: str, device: str, error: str) -> str:
    hint = " Is the device's driver installed? Try DEVICE=CPU." if device != "CPU" else ""
    return f"OpenVINO could not load {source} ({precision}) on {device}: {error}.{hint}"


def _bad_processor(name: str, processor: object, from_hub: bool) -> str:
    return (
        f"{name}'s config.json names {processor!r} for its image processor, which is not a Hugging Face "
        f"repository id{'' if from_hub else ' or an existing directory'}."
    )


# What the extra weighs is measured in the README ("Installing"); the hint repeats it for the person converting.
# PyTorch's index is asked for torch and torchvision alone (at the pins of pyproject.toml), never added as an extra
# index of the whole install, where a package of the same name as one of ours could win (scripts/pip_install.py).
INSTALL_HINT = (
    "Install it with `pip install 'phi3bot[convert]'`: about 1.2 GB with PyTorch's CPU wheels, taken first with "
    "`pip install --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1`, "
    "or 5.8 GB with the default Linux torch, which brings CUDA libraries. With Docker Compose, convert with its "
    '`convert` service instead (README, "Docker Compose"). Or take an already converted OpenVINO model: '
    "`phi3bot convert --from-ir OpenVINO/Phi-3.5-vision-instruct-int4-ov`."
)
KEEPS_SERVING = " The previous model keeps serving."
GIB = 1024**3
# What went wrong with a model (model_store/errors.py): each reason a ModelStoreError carries, said with its data,
# to the admin who asked for it (/convert, the terminal) or who runs the bot.
STORE_ERRORS: dict[str, str | Callable[..., str]] = {
    # the Hugging Face Hub (model_store/convert/hub.py)
    "gated": lambda repo, revision=None: (
        f"{_repository(repo, revision)} is gated: accept its licence on its Hugging Face page and set HF_TOKEN to a "
        "token of that account."
    ),
    "not_found": lambda repo, revision=None: (
        f"{_repository(repo, revision)} was not found on the Hugging Face Hub (or is private: set HF_TOKEN). "
        "Check the spelling."
    ),
    "hub_silent": _hub_silent,
    "hub_unreachable": lambda repo, revision=None: (
        f"Could not reach the Hugging Face Hub to get {_repository(repo, revision)}, and it is not in the local "
        "cache. Check the network (or a proxy), or pass a local checkpoint directory instead."
    ),
    "hub_refused": lambda repo, error, revision=None: (
        f"The Hugging Face Hub refused {_repository(repo, revision)}: {error}"
    ),
    "hub_failed": lambda repo, error, revision=None: f"Could not get {_repository(repo, revision)}: {error}",
    "no_commit": "The Hugging Face Hub did not say which commit of {repo} it serves.",
    "download_incomplete": _download_incomplete,
    # code a conversion would run (model_store/convert/pins.py, job.py)
    "untrusted": _untrusted,
    "code_from_elsewhere": lambda name, entries: (
        f"{name} loads code from another repository ({', '.join(entries)} in its auto_map). A conversion runs only "
        "the code of the checkpoint it converts, at the revision confirmed; this one cannot be converted as it is."
    ),
    "processor_code": lambda name, named_by, entries: (
        f"{name}, which {named_by} names for its image processor, ships code ({', '.join(entries)} in its "
        "auto_map). Only its configuration is read, and no code from it runs, so it cannot be converted as it is."
    ),
    "bad_processor": _bad_processor,
    # the conversion (model_store/convert/)
    "missing_extra": lambda missing: (
        "Converting a checkpoint needs phi3bot's conversion extra, which this install does not have (missing: "
        f"{', '.join(missing)}). {INSTALL_HINT}"
    ),
    "disk": lambda needed, where, free: (
        f"Not enough disk space: the conversion needs about {needed / GIB:.1f} GiB in {where}, and "
        f"{free / GIB:.1f} GiB is free. Free some space or move DATA_DIR."
    ),
    "memory_limit": lambda needed, limit, used, available: (
        f"Not enough memory: the conversion needs about {needed / GIB:.1f} GiB, and the memory limit of this "
        f"container or service ({limit / GIB:.1f} GiB, {used / GIB:.1f} GiB in use) leaves {available / GIB:.1f} "
        "GiB. Raise the limit (Docker Compose: PHI3BOT_CONVERT_MEMORY_LIMIT; systemd: MemoryMax), or convert on a "
        "bigger machine and bring the result with --from-ir."
    ),
    "memory": lambda needed, available: (
        f"Not enough memory: the conversion needs about {needed / GIB:.1f} GiB, and {available / GIB:.1f} GiB is "
        "available. Close other programs, or convert on a bigger machine and bring the result with --from-ir."
    ),
    "busy": "Another conversion is already running; wait for it to finish.",
    "unsupported_model_type": lambda config, model_type: (
        f"{config} says model_type={model_type!r}; this bot converts and runs Phi-3-vision (phi3_v) models such "
        "as microsoft/Phi-3.5-vision-instruct, and Whisper (whisper) ones such as openai/whisper-base for voice "
        "messages."
    ),
    "no_int4": (
        "INT4 is for a vision model's language model; a {kind} model converts to int8 (its default), fp16 or fp32."
    ),
    "wrong_kind": lambda config, model_type, wanted: (
        f"{config} holds a {model_type!r} model, which is not a {wanted} model; choose a "
        + ("Phi-3-vision model (MODEL)." if wanted == "vision" else "Whisper model.")
    ),
    "no_weights": "{directory} has a config.json but no weights (*.safetensors).",
    "export_failed": "The export failed: {error}." + KEEPS_SERVING,
    "export_ended": lambda exitcode: f"The export failed: its process {ended(exitcode)}.{KEEPS_SERVING}",
    "did_not_run": "The converted model did not run in OpenVINO GenAI: {error}." + KEEPS_SERVING,
    "no_tokens": "The converted model generated no tokens." + KEEPS_SERVING,
    "speech_not_loaded": (
        "{source} was converted but did not load as the speech model here (the log says why); voice questions go "
        "on as before."
    ),
    "cancelled": "The conversion was cancelled." + KEEPS_SERVING,
    "interrupted": "The conversion was interrupted." + KEEPS_SERVING,
    "conversion_ended": lambda exitcode: f"The conversion process {ended(exitcode)}.{KEEPS_SERVING}",
    "not_an_answer": "The conversion process answered with something else ({error}).",
    "conversion_out_of_memory": "The conversion ran out of memory." + KEEPS_SERVING,
    "conversion_failed": "The conversion failed: {error}." + KEEPS_SERVING,
    # naming and finding a model (model_store/sources.py, layout.py, store.py, loader.py)
    "no_model_given": (
        "No model given. Name a Hugging Face repository such as microsoft/Phi-3.5-vision-instruct or a directory."
    ),
    "not_a_source": lambda ref: (
        f"{ref!r} is neither an existing directory nor a Hugging Face repository id (owner/name). Check the path, "
        "or use e.g. microsoft/Phi-3.5-vision-instruct."
    ),
    "file_missing": "{path} is missing.",
    "bad_json": "{path} is not valid JSON ({error}). Convert or download the model again.",
    "not_an_object": "{path} should hold a JSON object. Convert or download the model again.",
    "no_model_at": (
        "No converted model at {directory}. Convert one first, e.g. "
        "`phi3bot convert --model microsoft/Phi-3.5-vision-instruct --precision int4`."
    ),
    "incomplete": lambda directory, missing: (
        f"The model in {directory} is incomplete: {', '.join(missing)} missing. Convert it again."
    ),
    "not_for_genai": "{config} lacks {key}; it was not exported for OpenVINO GenAI.",
    "bad_manifest": "The model in {directory} has a missing or unreadable {manifest} ({error}). Convert it again.",
    "not_converted": _not_converted,
    "not_loaded": _not_loaded,
    # the model's process (engine/pipeline_host.py, pipeline_process.py)
    "load_crashed": "Loading {source} failed: {error}",
    "model_process_ended": lambda exitcode: f"The model process {ended(exitcode)} while loading.",
}


def store_error(reason: str, data: Mapping[str, object]) -> str:
    """What went wrong with a model, and what to do about it."""
    return _said(STORE_ERRORS, reason, data)


def store_failed(reason: str, data: Mapping[str, object]) -> str:
    """The same in a chat, where a conversion's progress was shown."""
    return f"❌ {store_error(reason, data)}"


def ovms_exported(source: str, precision: str, path: str, repository: str, name: str) -> str:
    """What ``phi3bot export-ovms`` did, and how to serve the result."""
    return (
        f"Exported {source} ({precision}) to {path} as the servable {name!r}. Serve it with OpenVINO Model Server "
        f"2025.1 or later:\n"
        f"  docker run -d -p 8000:8000 -v {repository}:/models:ro openvino/model_server:latest "
        f"--rest_port 8000 --config_path /models/config.json\n"
        f"and give the bot MODEL_SERVICE_URL=http://<that host>:8000/v3 (and MODEL={name} if it is not already)."
    )


def from_a_directory(name: str) -> str:
    """A model converted from a directory, to people who may not see its path on this server."""
    return f"{name} (converted from a local directory)"


def model_shown(name: str, serving: Serving, queue: FairQueue | None) -> str:
    """What /model says; ``name``: the model's, as the person asking may see it; ``queue``: the local engine's line
    (a model service keeps its own)."""
    lines = [
        f"Model: {name}" + (" (synthetic test model)" if serving.synthetic else ""),
        f"Precision: {serving.precision}",
        f"Device: {serving.device}",
    ]
    if serving.speech is not None:
        lines.append(f"Voice questions: {serving.speech}")
    elif serving.service is None:
        lines.append("Voice questions: no speech model (an admin can add one with /convert openai/whisper-base)")
    if serving.service is not None:
        lines.append("Served by a model service on another machine")
    if queue is not None:
        lines.append(f"Queue: {queue.running} answering, {queue.waiting} waiting")
    return "\n".join(lines)


def stats_shown(
    uptime: float,
    running: tuple[EngineStats, FairQueue | None] | None,
    refused: RefusalCounts,
    skipped: int,
    history: StoreStats,
) -> str:
    """What /stats says; ``running``: the engine's counts and its line, while a model is loaded."""
    lines = [f"Uptime: {format_elapsed(uptime)}"]
    if running is not None:
        s, queue = running
        lines += [
            f"Answered: {s.answered}, stopped: {s.cancelled}, timed out: {s.timed_out}, failed: {s.failed}",
            f"Tokens generated: {s.generated_tokens}, busy: {format_elapsed(s.busy_seconds)}",
            f"Read ahead: {s.prepared} conversations ({s.prepared_steps} of them for a coming step); "
            f"read again when asked: {s.replays} photo messages",
        ]
        if queue is not None:
            lines.append(f"Queue: {queue.running} answering, {queue.waiting} waiting, {queue.served} served")
    lines.append(
        f"Refusals: {refused.sent} sent, {refused.repeated} not repeated, {refused.dropped} dropped for "
        f"Telegram's rate limit; {skipped} requests in all left unsent for it"
    )
    lines.append(
        f"History: {history.conversations} chats, {history.messages} messages, {history.images} images, "
        f"{history.database_bytes / 1e6:.1f} MB"
    )
    return "\n".join(lines)


def converting(model: str, precision: str | None, progress: Progress | None = None, *, loading: bool = False) -> str:
    """The message that follows a conversion: started, at ``progress``, or loading the model it made;
    ``precision``: None while it is not known (a directory whose configuration says nothing the bot can read)."""
    header = f"🔧 Converting {model} to {precision}" if precision else f"🔧 Converting {model}"
    if progress is not None:
        return f"{header}\n{progress.percent:.0f}% — {progress.phase}: {progress.detail}"
    return f"{header}\nLoading the new model…" if loading else f"{header}…"


def not_loaded(error: str) -> str:
    """A converted model that failed to load for a reason no ModelStoreError names."""
    return f"❌ The new model could not be loaded ({error}). The previous model keeps serving."


def heard_later(entry: ModelEntry, seconds: float) -> str:
    """A speech model converted while no vision model is loaded: nothing hears until one is."""
    return (
        f"✅ Converted {entry.source} ({entry.precision}) in {format_elapsed(seconds)}. Voice questions will be heard "
        "once a vision model is loaded: convert one with /convert."
    )


def now_serving(entry: ModelEntry, seconds: float) -> str:
    took = f"Took {format_elapsed(seconds)}."
    if entry.kind == "speech":
        return f"✅ Voice questions are now heard by {entry.source} ({entry.precision}). {took}"
    return f"✅ Now serving {entry.source} ({entry.precision}). {took}"
