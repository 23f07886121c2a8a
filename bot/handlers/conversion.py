"""/convert and what follows it: a repository nobody vouched for is looked up and its revisions shown to the admin,
who confirms with a button; the conversion then runs in its own process (model_store/convert/), its progress
shown by editing one message, and the new model loaded and swapped in."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

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
from model_store.convert import ConversionRequest, convert_async, pins
from model_store.convert.extra import require_conversion_extra
from model_store.errors import MissingDependencyError, ModelStoreError
from model_store.progress import Progress
from model_store.sources import PRECISIONS, parse_source
from model_store.store import ModelStore

log = logging.getLogger(__name__)

PROGRESS_EDIT_SECONDS = 3.0
CONFIRM_SECONDS = 15 * 60  # a question left unanswered longer is asked again: the repository may have changed


@dataclass(frozen=True)
class _Confirmation:
    """A conversion waiting for an admin to accept running the code of one pinned revision (reading the
    repositories its configuration names at theirs)."""

    pinned: pins.Pins
    precision: str
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
        precision = settings.precision
        if args and args[-1].lower() in PRECISIONS:
            precision = args.pop().lower()
        model = args[0] if args else settings.model
        try:
            source = parse_source(model)
            if not source.vouched_for:  # its code would run here: the admin sees which revisions and confirms
                found = await look_up(source, settings, self.services.stopping)
                if found is not None:  # else the bot is stopping
                    await self._ask_to_trust(message, found, precision)
                return
        except TimeoutError:
            await message.reply_text(texts.hub_too_slow(WHOLE_LOOK_UP * settings.hub_timeout_seconds))
            return
        except ModelStoreError as error:
            await message.reply_text(texts.store_failed(error.reason, error.data))
            return
        status = await message.reply_text(texts.converting(model, precision), do_quote=not is_private(message))
        self._running = self.services.background.start(self._convert(status, model, precision), update)

    def _converting(self) -> bool:
        return self._running is not None and not self._running.done()

    async def _ask_to_trust(self, message: Message, found: pins.Pins, precision: str) -> None:
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
        await query.message.edit_text(texts.converting(model, confirmation.precision))
        converting = self._convert(query.message, model, confirmation.precision, confirmed=found)
        self._running = self.services.background.start(converting, update)

    async def _convert(self, status: Message, model: str, precision: str, confirmed: pins.Pins | None = None) -> None:
        """Runs in the background: progress is shown by editing one message every few seconds, whatever the pace.
        ``confirmed``: the revisions the admin agreed to run the code of (and to read), and only those."""
        settings = self.services.settings
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
                    await show(texts.converting(model, precision, shown))

        # Chosen for the next start (active.json) only once it has loaded here, so a model that fails to load
        # is not the one a restart loads.
        pinned = confirmed.checkpoint if confirmed else None
        request = ConversionRequest(
            source=pinned.repo_id if pinned else model,
            store_root=str(settings.store_dir),
            precision=precision,
            activate=False,
            device=settings.device,
            revision=pinned.revision if pinned else None,
            trust_remote_code=confirmed is not None,
            named_revisions=confirmed.named_revisions if confirmed else {},
            hf_token=settings.hub_token,
            hub_timeout=settings.hub_timeout_seconds,
        )
        reporter = self.services.background.start(report())
        try:
            entry = await convert_async(request, lambda update: latest.__setitem__(slice(None), [update]))
            reporter.cancel()
            await show(texts.converting(model, precision, loading=True))
            if self.services.engine is None:
                self.services.engine = await build_engine(settings, entry)
            else:
                await load_and_swap(self.services.engine, settings, entry)
            ModelStore(settings.store_dir).set_active(entry)
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
        await show(texts.now_serving(entry, time.monotonic() - started))
