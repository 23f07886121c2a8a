"""/convert and what follows it: a repository nobody vouched for is looked up and, when its conversion would run
its code (a vision model's), its revisions are shown to the admin, who confirms with a button; the conversion then
runs in its own process (model_store/convert/), its progress shown by editing one message, and the new model
loaded and swapped in.  A speech model (Whisper) is converted at the revision looked up without a question (its
export runs transformers' own code), and becomes the one that hears voice questions beside the vision model."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cachetools import TTLCache
from telegram import Message, Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot import texts
from bot.answers.read_ahead import warm_up
from bot.handlers.admins import for_admins, is_admin
from bot.handlers.hub_lookup import WHOLE_LOOK_UP, look_up
from bot.output.buttons import confirm_keyboard
from bot.output.chat import is_private
from bot.running.runtime import build_engine, load_and_swap
from bot.services import Services
from engine.engine import Engine
from model_store.convert import ConversionRequest, convert_async, pins
from model_store.convert.extra import require_conversion_extra
from model_store.errors import MissingDependencyError, ModelStoreError, ValidationFailedError
from model_store.layout import SPEECH, VISION, ModelKind, kind_of, read_json
from model_store.loader import chosen_entry
from model_store.progress import Progress
from model_store.sources import KNOWN_SPEECH_MODELS, PRECISIONS, ModelSource, parse_source
from model_store.store import ModelEntry, ModelStore

log = logging.getLogger(__name__)

PROGRESS_EDIT_SECONDS = 3.0
CONFIRM_SECONDS = 15 * 60  # a question left unanswered longer is asked again: the repository may have changed


@dataclass(frozen=True)
class _Confirmation:
    """A conversion waiting for an admin to accept running the code of one pinned revision (reading the
    repositories its configuration names at theirs)."""

    pinned: pins.Pins
    precision: str | None  # None: the configured one
    chat_id: int  # the message that asks, and whose buttons answer
    message_id: int


class Conversion:
    """One conversion at a time, for the bot's admins; it runs as work the bot owns (bot/running/background.py)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._confirmations: TTLCache[str, _Confirmation] = TTLCache(maxsize=16, ttl=CONFIRM_SECONDS)
        self._running: asyncio.Task[None] | None = None

    def stop(self) -> None:
        """At SIGTERM: the running conversion's task ends its process (model_store/convert/process.py) while the
        bot stops, before the model and the history are closed."""
        if self._running is not None:
            self._running.cancel()

    async def convert(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        admitted = await for_admins(self.services, update)
        if admitted is None:
            return
        message, _ = admitted
        if self.services.settings.model_service_url is not None:  # nothing converted here would be served
            await message.reply_text(texts.CONVERT_ON_THE_SERVICE)
            return
        if self._converting():
            await message.reply_text(texts.CONVERSION_RUNNING)
            return
        try:
            require_conversion_extra()
        except MissingDependencyError as error:
            await message.reply_text(texts.store_failed(error.reason, error.data))
            return
        settings = self.services.settings
        args = list(context.args or [])
        precision = args.pop().lower() if args and args[-1].lower() in PRECISIONS else None
        model = args[0] if args else settings.model
        found: pins.Pins | None = None
        try:
            source = parse_source(model)
            if not source.vouched_for:
                found = await look_up(source, settings, self.services.stopping)
                if found is None:  # the bot is stopping
                    return
                kind = kind_of(found.config, Path("config.json"))
                if kind.runs_code:  # its code would run here: the admin sees which revisions and confirms
                    await self._ask_to_trust(message, found, precision)
                    return
            else:
                kind = _vouched_kind(source)
        except TimeoutError:
            await message.reply_text(texts.hub_too_slow(WHOLE_LOOK_UP * settings.hub_timeout_seconds))
            return
        except ModelStoreError as error:
            await message.reply_text(texts.store_failed(error.reason, error.data))
            return
        makes = self._precision(precision, kind)
        status = await message.reply_text(texts.converting(model, makes), do_quote=not is_private(message))
        converting = self._convert(status, model, (precision, makes), found)
        self._running = self.services.background.start(converting, update)

    def _precision(self, asked: str | None, kind: ModelKind | None) -> str | None:
        """What a conversion of ``kind`` (None: not known before it starts) makes: as asked, else the configured one
        for a vision model, else the kind's own (model_store/convert/job.py)."""
        if asked is not None or kind is None:
            return asked
        return self.services.settings.precision if kind is VISION else kind.default_precision

    def _converting(self) -> bool:
        return self._running is not None and not self._running.done()

    async def _ask_to_trust(self, message: Message, found: pins.Pins, precision: str | None) -> None:
        """The question names its ticket, and the ticket the message that asks it: a press counts only there."""
        assert found.checkpoint is not None
        ticket = secrets.token_urlsafe(8)
        repo_id, revision = found.checkpoint.repo_id, found.checkpoint.revision
        asked = await message.reply_text(
            texts.trust_remote_code(repo_id, revision, list(found.named_revisions.items())),
            reply_markup=confirm_keyboard(ticket, repo_id, revision),
            do_quote=not is_private(message),
            disable_web_page_preview=True,
        )
        self._confirmations[ticket] = _Confirmation(found, precision, asked.chat_id, asked.message_id)

    async def confirm_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """An admin's answer to whether a repository's code may run; the question's message then shows the
        conversion's progress."""
        query = update.callback_query
        if query is None or not isinstance(query.message, Message) or not context.matches:
            return
        if not is_admin(self.services, update):
            await self.services.refusals.answer(query, texts.ADMINS_ONLY)
            return
        choice, ticket = context.matches[0].group(1), context.matches[0].group(2)
        confirmation = self._confirmations.get(ticket)
        if confirmation is None or (confirmation.chat_id, confirmation.message_id) != (
            query.message.chat_id,
            query.message.message_id,
        ):
            confirmation = None  # unknown, expired, or another message's ticket: this message's question expired
        else:
            del self._confirmations[ticket]
        if confirmation is None or choice != "yes":
            await query.answer()
            await query.message.edit_text(
                texts.CONFIRMATION_EXPIRED if confirmation is None else texts.CONVERSION_CANCELLED
            )
            return
        if self._converting():
            self._confirmations[ticket] = confirmation  # still valid once the running one ends
            await query.answer(texts.CONVERSION_RUNNING)
            return
        await query.answer()
        found = confirmation.pinned
        assert found.checkpoint is not None
        log.info("admin %s confirmed running the code of %s", query.from_user.id, found.revisions)
        model = f"{found.checkpoint.repo_id}@{found.checkpoint.revision[:12]}"
        makes = self._precision(confirmation.precision, VISION)
        await query.message.edit_text(texts.converting(model, makes))
        converting = self._convert(query.message, model, (confirmation.precision, makes), found, confirmed=True)
        self._running = self.services.background.start(converting, update)

    async def _convert(
        self,
        status: Message,
        model: str,
        precisions: tuple[str | None, str | None],
        pinned: pins.Pins | None = None,
        *,
        confirmed: bool = False,
    ) -> None:
        """Runs in the background: progress is shown by editing one message every few seconds, whatever the pace.
        ``precisions``: the one asked for (None: the configured or the kind's own) and the one it makes, as far as
        is known before it starts; ``pinned``: the revisions looked up, read and only those; ``confirmed``: the
        admin agreed to run their code."""
        settings = self.services.settings
        precision, makes = precisions
        started = time.monotonic()
        latest: list[Progress] = []

        async def show(text: str) -> None:
            try:
                await status.edit_text(text)
            except TelegramError as error:
                log.info("conversion progress edit failed: %s", error)

        async def report() -> None:
            shown: Progress | None = None
            while True:
                await asyncio.sleep(PROGRESS_EDIT_SECONDS)
                if latest and latest[-1] != shown:
                    shown = latest[-1]
                    await show(texts.converting(model, makes, shown))

        # Chosen for the next start (active.json) only once it has loaded here, so a model that fails to load
        # is not the one a restart loads.
        checkpoint = pinned.checkpoint if pinned else None
        request = ConversionRequest(
            source=checkpoint.repo_id if checkpoint else model,
            store_root=str(settings.store_dir),
            precision=precision,
            vision_precision=settings.precision,
            activate=False,
            device=settings.device,
            revision=checkpoint.revision if checkpoint else None,
            trust_remote_code=confirmed,
            named_revisions=pinned.named_revisions if pinned else {},
            hf_token=settings.hub_token,
            hub_timeout=settings.hub_timeout_seconds,
        )
        reporter = self.services.background.start(report())
        try:
            entry = await convert_async(request, lambda update: latest.__setitem__(slice(None), [update]))
            reporter.cancel()
            await show(texts.converting(model, entry.precision, loading=True))
            await self._serve(entry)
            warm_up(self.services)  # the new model has read nothing yet
        except ModelStoreError as error:
            await show(texts.store_failed(error.reason, error.data))
            return
        except Exception as error:
            log.exception("conversion or loading failed")
            await show(texts.not_loaded(str(error)))
            return
        finally:
            reporter.cancel()
        took = time.monotonic() - started
        await show(
            texts.now_serving(entry, took) if self.services.engine is not None else texts.heard_later(entry, took)
        )

    async def _serve(self, entry: ModelEntry) -> None:
        """The new model loaded and swapped in, then chosen for the next start, so that one that fails to load is
        not what a restart loads.  A speech model is loaded beside the vision model serving now (a model process
        holds both), and refused, the previous one kept, when it does not load."""
        store = ModelStore(self.services.settings.store_dir)
        if entry.kind != SPEECH.name:
            await self._load(entry)
        elif self.services.engine is not None:  # else it is loaded with the first vision model
            await self._load(None, speech=entry)
            engine = self.services.engine
            if isinstance(engine, Engine) and not engine.hears:
                if chosen_entry(store, SPEECH.name) is not None:  # back to the speech model chosen before
                    await self._load(None)
                raise ValidationFailedError("speech_not_loaded", source=entry.source)
        store.set_active(entry)

    async def _load(self, entry: ModelEntry | None, *, speech: ModelEntry | None = None) -> None:
        """``entry``: the vision model to serve (None: the one chosen); ``speech``: a speech model instead of the
        store's."""
        settings, engine = self.services.settings, self.services.engine
        if engine is None:
            self.services.engine = await build_engine(settings, entry)
        else:
            assert isinstance(engine, Engine)  # /convert refuses with a model service
            await load_and_swap(engine, settings, entry, speech=speech)


def _vouched_kind(source: ModelSource) -> ModelKind | None:
    """The kind of a source converted without a look-up: a known repository's, or what a directory's configuration
    says (None when it cannot be read: the conversion says why)."""
    if source.local_dir is None:
        assert source.repo_id is not None
        return SPEECH if source.repo_id.lower() in KNOWN_SPEECH_MODELS.values() else VISION
    try:
        return kind_of(read_json(source.local_dir / "config.json"), source.local_dir / "config.json")
    except ModelStoreError:
        return None
