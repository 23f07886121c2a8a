"""The Telegram application: wiring, start-up and shutdown, long polling or a webhook.

Updates are processed concurrently (one slow answer must not hold up other chats), each first through the
gate (bot/handlers/gate.py); the bot's rate limiter (bot/output/pace.py) spaces requests within Telegram's global and
per-group limits and lets each request say whether it may wait, while flood-control errors (429) come back to
the streaming code, which knows whether a message can wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from telegram import BotCommand, Update
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    ChatMemberHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from bot import texts
from bot.admission.access import AccessPolicy, UserRateLimiter
from bot.admission.refusals import Refusals
from bot.answers.read_ahead import warm_up
from bot.handlers.commands import Commands, unknown_command
from bot.handlers.conversion import Conversion
from bot.handlers.gate import Gate
from bot.handlers.group_upgrades import GroupUpgrades
from bot.handlers.membership import Membership
from bot.handlers.questions import Questions
from bot.handlers.retry import Retries
from bot.history import HistoryError, HistoryStore
from bot.output import buttons
from bot.output.chat import tell
from bot.output.pace import Pacer, Skipped
from bot.output.recovery import finish_interrupted
from bot.running.background import Background
from bot.running.health import HeartbeatFile
from bot.running.runtime import build_engine
from bot.running.startup import StartupError, check_directories, connect, reach
from bot.running.webhook import WebhookServer
from bot.services import Services
from bot.settings import Settings
from engine.backend import Backend
from engine.engine import SHUTDOWN_GRACE_SECONDS
from model_store.errors import ModelStoreError
from model_store.store import ModelStore

log = logging.getLogger(__name__)


class RedactSecrets(logging.Filter):
    """httpx logs request URLs, and the Bot API puts the token in the URL; python-telegram-bot logs the
    parameters of each call at DEBUG (the webhook's secret among them) and a rejected token's exception with
    the token in its message, so tracebacks are searched as well."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [secret for secret in secrets if secret]

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<secret>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._redact(message) != message:
            record.msg, record.args = self._redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


def install_redaction(*secrets: str) -> None:
    redactor = RedactSecrets(list(secrets))
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def build_application(settings: Settings) -> Application:
    assert settings.telegram_bot_token is not None
    builder = (
        ApplicationBuilder()
        .token(settings.telegram_bot_token.get_secret_value())
        .rate_limiter(Pacer())
        .concurrent_updates(64)
    )
    if settings.telegram_api_base_url:
        builder = builder.base_url(settings.telegram_api_base_url)
    if settings.telegram_file_base_url:
        builder = builder.base_file_url(settings.telegram_file_base_url)
    application = builder.build()
    application.bot_data["settings"] = settings
    return application


async def setup(application: Application) -> None:
    """Open the history, load the model, register handlers; run before updates are received (and by tests).

    The bot's commands are set first: a Bot API server that fails is found before anything is opened. Then the
    heartbeat starts: the loop is alive while the model loads, and a health check should say so. A failure after
    that closes whatever was opened (``teardown``), so a failed start leaves no thread or process behind."""
    settings: Settings = application.bot_data["settings"]
    commands = [BotCommand(name, description) for name, description in texts.COMMANDS]
    await reach(settings, "setMyCommands", lambda: application.bot.set_my_commands(commands))
    heartbeat = HeartbeatFile(settings.heartbeat_path, lambda: {"model_loaded": _model_loaded(application)})
    heartbeat.start()
    application.bot_data["heartbeat"] = heartbeat
    try:
        await _open(application, settings, heartbeat)
    except BaseException:
        await teardown(application)
        raise


async def _open(application: Application, settings: Settings, heartbeat: HeartbeatFile) -> None:
    history = await HistoryStore.open(settings.database_path)  # type: ignore[arg-type]
    services = Services(
        settings=settings,
        history=history,
        access=AccessPolicy(settings.admin_user_ids, settings.allowed_user_ids, settings.allowed_chat_ids),
        limiter=UserRateLimiter(settings.user_requests_per_minute),
        background=Background(application.process_error),  # failures reach on_error, as a handler's do
        bot_username=application.bot.username,
    )
    application.bot_data["services"] = services  # from here on, teardown closes the history
    interrupted = await history.mark_interrupted()
    if interrupted:
        log.info("%d answers were interrupted by the last shutdown; finishing their messages", len(interrupted))
        await finish_interrupted(application.bot, history, interrupted)
    ModelStore(settings.store_dir).ensure()
    try:
        services.engine = await build_engine(settings, loaded=False)  # questions are taken while it loads
    except ModelStoreError as error:
        log.warning("no model loaded: %s", texts.store_error(error.reason, error.data))
    if services.engine is not None:
        services.background.start(_until_loaded(services, services.engine, heartbeat))
    heartbeat.beat()
    register_handlers(application, services)
    warm_up(services)
    if not settings.admin_user_ids:
        log.warning("ADMIN_USER_IDS is empty: nobody can use /convert, and with no allowlist nobody gets answers")


async def _until_loaded(services: Services, engine: Backend, heartbeat: HeartbeatFile) -> None:
    """The model loads while the bot takes questions (they wait for it, their status shown); one that does not
    load leaves the bot without a model, as if there were none, and says why.  A model new to this machine then
    has its speed measured."""
    try:
        await engine.loaded()
    except ModelStoreError as error:
        log.warning("no model loaded: %s", texts.store_error(error.reason, error.data))
        if services.engine is engine:  # not replaced meanwhile (a model swapped in keeps the engine, and loads)
            services.engine = None
        await engine.aclose()
        return
    finally:
        heartbeat.beat()
    if services.settings.measure_speed_at_start:
        await engine.calibrate()  # where this model has never run on this machine, so that estimates are shown


def stop_work(application: Application) -> int:
    """Stops what would hold a shutdown up, and returns how many answers it stopped: answers stop and their final
    texts are tried once, not through flood control (recovery at the next start shows what Telegram would not take
    now), files being read and a conversion end, so a shutdown fits in the seconds Docker gives it."""
    services: Services | None = application.bot_data.get("services")
    if services is not None:
        services.stopping.set()
        services.media.stop()
    conversion: Conversion | None = application.bot_data.get("conversion")
    if conversion is not None:
        conversion.stop()
    pacer = application.bot.rate_limiter
    if isinstance(pacer, Pacer):  # nothing waits for Telegram's rate limit any more: it is shown at the next start
        pacer.stop()
    return services.answers.stop_all(grace=SHUTDOWN_GRACE_SECONDS) if services is not None else 0


def _stop(application: Application, shutdown: asyncio.Event, signum: int) -> None:
    stopped = stop_work(application)
    log.info("%s: stopping %d running answers and shutting down", signal.Signals(signum).name, stopped)
    shutdown.set()


def _model_loaded(application: Application) -> bool:
    services: Services | None = application.bot_data.get("services")
    return services is not None and services.engine is not None and not services.engine.loading


async def teardown(application: Application) -> None:
    """Closes what ``setup`` opened, each part even when another fails to close: the history's connection and
    the model's process left open would keep the process from exiting. The heartbeat goes first (a bot that is
    stopping is not healthy), the history last (the others may still write to it)."""
    async with contextlib.AsyncExitStack() as closing:
        services: Services | None = application.bot_data.get("services")
        if services is not None:
            closing.push_async_callback(services.history.close)
            if services.engine is not None:
                closing.push_async_callback(services.engine.aclose)
            closing.push_async_callback(services.background.aclose)  # first: a conversion ends its process
        heartbeat: HeartbeatFile | None = application.bot_data.get("heartbeat")
        if heartbeat is not None:
            closing.push_async_callback(heartbeat.stop)


def register_handlers(application: Application, services: Services) -> None:
    """The gate first, for every update (group -1); then only new messages count: an edited caption or an edited
    old /convert is not a new request.  Every button press gets an answer, an unknown one "expired"."""
    commands, conversion = Commands(services), Conversion(services)
    application.bot_data["conversion"] = conversion  # a signal stops its work (``_stop``)
    questions, retries, upgrades = Questions(services), Retries(services), GroupUpgrades(services)
    new = filters.UpdateType.MESSAGE
    application.add_handler(TypeHandler(Update, Gate(services).check), group=-1)
    application.add_handler(CommandHandler(["start", "help"], commands.help, filters=new))
    application.add_handler(CommandHandler("reset", commands.reset, filters=new))
    application.add_handler(CommandHandler("stop", commands.stop, filters=new))
    application.add_handler(CommandHandler("model", commands.model, filters=new))
    application.add_handler(CommandHandler("persona", commands.persona, filters=new))
    application.add_handler(CommandHandler("retry", retries.retry_command, filters=new))
    application.add_handler(CommandHandler("stats", commands.stats, filters=new))
    application.add_handler(CommandHandler("convert", conversion.convert, filters=new))
    application.add_handler(MessageHandler(new & filters.COMMAND, unknown_command))
    application.add_handler(CallbackQueryHandler(commands.stop_button, pattern=buttons.STOP))
    application.add_handler(CallbackQueryHandler(conversion.confirm_button, pattern=buttons.CONFIRM))
    application.add_handler(CallbackQueryHandler(questions.describe_button, pattern=buttons.DESCRIBE))
    application.add_handler(CallbackQueryHandler(retries.retry_button, pattern=buttons.RETRY))
    application.add_handler(CallbackQueryHandler(_expired))
    application.add_handler(ChatMemberHandler(Membership(services).on_my_chat_member))
    application.add_handler(MessageHandler(new & filters.StatusUpdate.MIGRATE, upgrades.on_migration))
    application.add_handler(MessageHandler(new & ~filters.COMMAND & ~filters.StatusUpdate.ALL, questions.on_message))
    application.add_error_handler(on_error)


async def _expired(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A button whose data no handler knows (a button of an older release, say): its press is still answered."""
    if update.callback_query is not None:
        await Refusals.answer(update.callback_query, texts.BUTTON_EXPIRED)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Whatever a handler or work in the background (bot/running/background.py) did not catch: logged (the log
    filter keeps secrets out), and the person whose update it was is told if Telegram's rate limit has room, so
    nobody waits for an answer that is not coming.  A reply that gave up waiting for the rate limit (at
    shutdown) is no failure of the handler's."""
    if isinstance(context.error, Skipped):
        log.info("a reply was not sent: %s", context.error)
        return
    if not isinstance(update, Update):  # reading ahead, say: nobody is waiting for it
        log.error("work in the background failed", exc_info=context.error)
        return
    log.error("handling an update failed", exc_info=context.error)
    try:
        if update.callback_query is not None:
            await update.callback_query.answer(texts.FAILED)
        elif update.effective_message is not None:
            await tell(update.effective_message, texts.FAILED, pace="now_or_never")
    except TelegramError as error:
        log.info("could not say that handling an update failed: %s", error)


def run_bot(settings: Settings) -> int:
    """Exit codes: 0 after a shutdown by signal, 2 when the bot cannot start (one line on stderr says why)."""
    if settings.telegram_bot_token is None:
        print(
            "TELEGRAM_BOT_TOKEN is not set. Create a bot with @BotFather, then put its token in .env "
            "(copy .env.example to start).",
            file=sys.stderr,
        )
        return 2
    secret = _webhook_secret(settings) if settings.webhook_url else ""
    service_key = settings.model_service_api_key
    install_redaction(
        settings.telegram_bot_token.get_secret_value(),
        secret,
        settings.hub_token or "",
        service_key.get_secret_value() if service_key is not None else "",
    )
    try:
        asyncio.run(serve(build_application(settings), settings, secret))
    except (StartupError, HistoryError) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    return 0


async def serve(application: Application, settings: Settings, secret: str) -> None:
    """Starts, receives updates until SIGTERM or SIGINT, and shuts down. Each step that opens something closes
    it however a later step ends, so every failed start exits instead of hanging; raises StartupError or
    HistoryError, whose message is one line, when the bot cannot start. SIGTERM and SIGINT stop running answers
    first (their text is kept), so shutdown takes seconds instead of waiting for every answer to finish; one
    that comes while the bot is still starting (reaching Telegram, loading the model) ends the start."""
    check_directories(settings)
    webhook = WebhookServer(settings, secret) if settings.webhook_url else None
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stop, application, shutdown, signum)
    try:
        if not await _until_shutdown(_open_bot(application, settings), shutdown):
            return
        try:
            await _receive(application, settings, webhook, shutdown)
        finally:
            await teardown(application)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if webhook is not None:
            await webhook.close()
        await application.shutdown()
        await application.bot.shutdown()  # the connections of an initialisation that failed


async def _open_bot(application: Application, settings: Settings) -> None:
    await connect(application, settings)
    await setup(application)


async def _until_shutdown(work: Coroutine[Any, Any, None], shutdown: asyncio.Event) -> bool:
    """Runs ``work`` unless a signal comes first, which cancels it (closing what it opened); True if it ran to
    its end.  Its exception, if any, is raised."""
    working = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(shutdown.wait())
    try:
        await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (working, stopping):
            task.cancel()
        await asyncio.gather(working, stopping, return_exceptions=True)
    if working.cancelled():
        return False
    working.result()
    return True


async def _receive(
    application: Application, settings: Settings, webhook: WebhookServer | None, shutdown: asyncio.Event
) -> None:
    updater = application.updater
    assert updater is not None
    await application.start()
    try:
        if await _until_shutdown(_start_receiving(application, settings, webhook), shutdown):
            username = application.bot.username
            log.info("ready: @%s (https://t.me/%s), %s", username, username, _how(settings, webhook))
            await shutdown.wait()
    finally:
        if webhook is not None:
            await webhook.close()
        if updater.running:
            await updater.stop()
        await application.stop()


async def _start_receiving(application: Application, settings: Settings, webhook: WebhookServer | None) -> None:
    """Tells Telegram where updates go and starts taking them."""
    if webhook is None:
        await reach(settings, "deleteWebhook", application.bot.delete_webhook)
        assert application.updater is not None
        await application.updater.start_polling(allowed_updates=Update.ALL_TYPES)
        return
    webhook.start(application)
    await reach(
        settings,
        "setWebhook",
        lambda: application.bot.set_webhook(webhook.url, secret_token=webhook.secret, allowed_updates=Update.ALL_TYPES),
        check="WEBHOOK_URL",
    )


def _how(settings: Settings, webhook: WebhookServer | None) -> str:
    """How updates arrive, for the line that says the bot is ready."""
    return "polling" if webhook is None else f"webhook at {webhook.url}, listening on {webhook.address}"


def _webhook_secret(settings: Settings) -> str:
    """Without a secret anyone who can reach the port could post updates as any user, an admin included; when
    none is set, a random one is made for this run and given to Telegram with setWebhook."""
    if settings.webhook_secret_token is not None:
        return settings.webhook_secret_token.get_secret_value()
    log.info("WEBHOOK_SECRET_TOKEN is not set: Telegram gets a random secret for this run")
    return secrets.token_urlsafe(32)
