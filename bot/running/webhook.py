"""Telegram's updates by webhook; any other request is refused on its headers, before its body is read.

python-telegram-bot's own webhook server reads a request's whole body, up to 100 MB, before it looks at the
secret, so anyone who can reach the port can make the bot hold that much per request. This server (tornado,
which python-telegram-bot's webhooks extra brings) streams bodies and decides before reading any: a method other
than POST, a path other than the webhook's, a missing or wrong secret (compared in constant time) and a body
announced larger than MAX_BODY_BYTES are refused and the connection closed unread; a body sent without its
length (chunked) is cut off at the same size. Updates go into python-telegram-bot's update queue, as its own
server puts them.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import re
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import tornado.netutil
import tornado.web
from telegram import Update
from telegram.ext import Application
from tornado.httpserver import HTTPServer

from bot.running.startup import StartupError
from bot.settings import Settings

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Telegram's updates are a few KB; a message's text, caption and entities stay far below this.
MAX_BODY_BYTES = 1024 * 1024
# Telegram keeps connections open between updates and opens new ones when these close.
IDLE_SECONDS = 60.0
BODY_SECONDS = 30.0


class WebhookServer:
    """Owns the listening socket from start-up to shutdown: bound before anything else starts, so a port in use
    ends the start at once, and serving from ``start`` on."""

    def __init__(self, settings: Settings, secret: str) -> None:
        assert settings.webhook_url is not None
        self.url = settings.webhook_url
        self.address = f"{settings.webhook_listen}:{settings.webhook_port}"
        self.secret = secret
        # Served at the URL's own path, so a reverse proxy can pass requests through unchanged.
        self._path = "/" + urlsplit(settings.webhook_url).path.strip("/")
        self._server: HTTPServer | None = None
        try:
            self._sockets = tornado.netutil.bind_sockets(settings.webhook_port, settings.webhook_listen)
        except OSError as error:
            reason = "in use by another program" if error.errno == errno.EADDRINUSE else error.strerror
            raise StartupError(
                f"the webhook cannot listen on {self.address} ({reason}): check WEBHOOK_LISTEN and WEBHOOK_PORT"
            ) from None

    def start(self, application: Application) -> None:
        handler = {"telegram": application, "secret": self.secret.encode()}
        routes = [(re.escape(self._path.rstrip("/")) + "/?", _Updates, handler)]
        web = tornado.web.Application(routes, default_handler_class=_Elsewhere, log_function=_log_request)
        self._server = HTTPServer(
            web,
            max_body_size=MAX_BODY_BYTES,
            max_buffer_size=2 * MAX_BODY_BYTES,
            idle_connection_timeout=IDLE_SECONDS,
            body_timeout=BODY_SECONDS,
        )
        self._server.add_sockets(self._sockets)

    async def close(self) -> None:
        """Stops listening and closes open connections (an update half received is sent again by Telegram);
        closing again does nothing."""
        server, self._server = self._server, None
        if server is None:
            for bound in self._sockets:
                bound.close()
            return
        server.stop()
        await server.close_all_connections()


class _Refusing(tornado.web.RequestHandler):
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """No page, and the client is told that the connection closes (unread, the body cannot be skipped)."""
        self.set_header("Connection", "close")
        self.finish()


@tornado.web.stream_request_body
class _Updates(_Refusing):
    SUPPORTED_METHODS = ("POST",)  # type: ignore[assignment]

    def initialize(self, telegram: Application, secret: bytes) -> None:
        self.telegram = telegram
        self.secret = secret
        self.body = bytearray()

    def prepare(self) -> None:
        """Runs on the headers, before any of the body is read: a refusal closes the connection unread."""
        given = self.request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self.secret):
            raise tornado.web.HTTPError(HTTPStatus.FORBIDDEN)
        announced = self.request.headers.get("Content-Length", "0")
        if not announced.isdigit():
            raise tornado.web.HTTPError(HTTPStatus.BAD_REQUEST)
        if int(announced) > MAX_BODY_BYTES:
            raise tornado.web.HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    def data_received(self, chunk: bytes) -> None:
        self.body += chunk  # at most MAX_BODY_BYTES: the server refuses more (its max_body_size)

    async def post(self) -> None:
        try:
            data = json.loads(self.body)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            update = Update.de_json(data, self.telegram.bot)
        except Exception as error:  # whatever an unreadable body raises, it is refused the same
            log.warning("the webhook received a body that is not an update (%s); refused", type(error).__name__)
            raise tornado.web.HTTPError(HTTPStatus.BAD_REQUEST) from None
        await self.telegram.update_queue.put(update)


@tornado.web.stream_request_body
class _Elsewhere(_Refusing):
    """Any other path, by any method: refused on its headers."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(HTTPStatus.NOT_FOUND)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Refusals at DEBUG only: anyone who can reach the port can make them, and each must cost the log nothing."""
    log.debug("webhook: %s answered %d", handler.request.method, handler.get_status())
