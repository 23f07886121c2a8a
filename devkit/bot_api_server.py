"""A stand-in Telegram Bot API server on 127.0.0.1, for driving the real python-telegram-bot over HTTP.

It keeps what a user would see (each chat's messages with their current text and edit history, and the drafts
a bot streams into private chats), records every call, and injects the failures the bot must survive: flood
control (429 with retry_after), "message is not modified", 5xx, slow answers, a blocked bot (403), a migrated
group, a message deleted mid-stream, a method an older server does not know (404).
Shapes follow the official server: ``{"ok": false, "error_code": N, "description": ..., "parameters": ...}``
with the HTTP status equal to the error code.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from telegram import ChatMember, Update

BOT_USER = {"id": 999000, "is_bot": True, "first_name": "Phi3Bot", "username": "phi3_test_bot"}
TOKEN = "123456:AAHstandInServerTestToken_0123456-x"  # the shape @BotFather's tokens have
# Every right a ChatMemberAdministrator lists (all required by the Bot API but the last four).
ADMIN_RIGHTS = (
    "can_manage_chat",
    "can_delete_messages",
    "can_manage_video_chats",
    "can_restrict_members",
    "can_promote_members",
    "can_change_info",
    "can_invite_users",
    "can_post_stories",
    "can_edit_stories",
    "can_delete_stories",
    "can_post_messages",
    "can_edit_messages",
    "can_pin_messages",
    "can_manage_topics",
)
# What a ChatMemberRestricted lists (all required by the Bot API).
RESTRICTED_RIGHTS = (
    "can_send_messages",
    "can_send_audios",
    "can_send_documents",
    "can_send_photos",
    "can_send_videos",
    "can_send_video_notes",
    "can_send_voice_notes",
    "can_send_polls",
    "can_send_other_messages",
    "can_add_web_page_previews",
    "can_change_info",
    "can_invite_users",
    "can_pin_messages",
    "can_manage_topics",
    "can_edit_tag",
)
TEXT_LIMIT = 4096
FILE_LIMIT = 20 * 1024 * 1024
DRAFT_LIFETIME = 30.0  # seconds a draft stays shown after its last refresh


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    status: int
    at: float


@dataclass
class SentMessage:
    chat_id: int
    message_id: int
    text: str
    entities: list[dict[str, Any]] = field(default_factory=list)
    reply_markup: dict[str, Any] | None = None
    reply_to: int | None = None
    thread_id: int | None = None
    edits: list[str] = field(default_factory=list)
    deleted: bool = False


@dataclass
class Draft:
    """One sendMessageDraft that Telegram accepted: what the user's chat showed from ``at`` (monotonic time)."""

    chat_id: int
    thread_id: int
    draft_id: int
    text: str
    at: float


@dataclass
class Fault:
    kind: str  # "429", "400", "403", "5xx", "slow", "migrate"
    times: int
    chat_id: int | None = None
    retry_after: int = 1
    description: str = ""
    delay: float = 0.0
    migrate_to: int = 0
    when: Callable[[dict[str, Any]], bool] | None = None  # only calls whose parameters this accepts
    hold: asyncio.Event | None = None  # the call waits until the test sets this, then fails as ``kind`` says


class ApiError(Exception):
    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


class FakeBotApi:
    def __init__(self, token: str = TOKEN, port: int = 0) -> None:
        """``port``: 0 for any free one; a fixed one lets a test start the server after the bot."""
        self.token = token
        self.calls: list[Call] = []
        self.chats: dict[int, list[SentMessage]] = defaultdict(list)
        self.commands: list[dict[str, Any]] = []
        self.callback_queries: dict[str, str | None] = {}  # id -> the text it was answered with (None: not yet)
        self.files: dict[str, tuple[bytes, str]] = {}
        self._sizes: dict[str, int] = {}
        self._paths: dict[str, str] = {}
        self.chat_types: dict[int, str] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.member_statuses: dict[tuple[int, int], str] = {}
        self.forums: set[int] = set()
        self.left_chats: list[int] = []  # chats the bot left (leaveChat), in order
        self.drafts: dict[int, list[Draft]] = defaultdict(list)  # every draft a chat was shown, in order
        self.draft_lifetime = DRAFT_LIFETIME
        self._shown_drafts: dict[tuple[int, int], Draft] = {}  # (chat, thread) -> the draft on screen
        self.unknown_methods: set[str] = set()
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._user_message_ids = itertools.count(1)
        self._bot_message_ids = itertools.count(100_000)
        self._new_update = asyncio.Event()
        self._closing = False  # set on the way out: a long poll still waiting returns at once
        self._faults: dict[str, list[Fault]] = defaultdict(list)
        self._storms: dict[str, tuple[float, int]] = {}
        self._runner: web.AppRunner | None = None
        self.port = port
        # Webhook mode, as the official server does it: updates are POSTed to the bot, in order, until it
        # answers 200; getUpdates is refused meanwhile.
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.webhook_statuses: list[int] = []
        self._session: ClientSession | None = None
        self._delivery: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeBotApi:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        app.router.add_route("*", "/{path:.*}", self._not_found)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = ClientSession(timeout=ClientTimeout(total=10))
        self._delivery = asyncio.create_task(self._deliver_to_webhook())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None and self._delivery is not None
        # The server's shutdown waits for every request still being handled, and a bot that was stopped or killed
        # leaves its getUpdates waiting here for the rest of its timeout (10 s for ``phi3bot run``).
        self._closing = True
        self._new_update.set()
        self._delivery.cancel()
        await asyncio.gather(self._delivery, return_exceptions=True)
        await self._session.close()
        await self._runner.cleanup()

    async def _deliver_to_webhook(self) -> None:
        assert self._session is not None
        while True:
            if self.webhook_url is None or not self._updates:
                self._new_update.clear()
                await self._new_update.wait()
                continue
            headers = {"X-Telegram-Bot-Api-Secret-Token": self.webhook_secret} if self.webhook_secret else {}
            try:
                async with self._session.post(self.webhook_url, json=self._updates[0], headers=headers) as response:
                    self.webhook_statuses.append(response.status)
                    delivered = response.status == 200
            except (ClientError, TimeoutError):
                self.webhook_statuses.append(0)
                delivered = False
            if delivered:
                self._updates.pop(0)
            else:
                await asyncio.sleep(0.5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # --- what users see ------------------------------------------------------------------------------------

    def messages(self, chat_id: int) -> list[SentMessage]:
        return [message for message in self.chats[chat_id] if not message.deleted]

    def visible_text(self, chat_id: int) -> list[str]:
        return [message.text for message in self.messages(chat_id)]

    @property
    def pending_updates(self) -> int:
        """Updates queued that the bot has not fetched (and acknowledged) yet."""
        return len(self._updates)

    def draft_texts(self, chat_id: int) -> list[str]:
        """Every text the chat's drafts showed, in order (a refresh with the same text counts again)."""
        return [draft.text for draft in self.drafts[chat_id]]

    def shown_draft(self, chat_id: int, thread_id: int | None = None) -> Draft | None:
        """The draft the user sees now: none once a message was sent there or 30 s passed without a refresh."""
        draft = self._shown_drafts.get((chat_id, thread_id or 0))
        if draft is None or time.monotonic() - draft.at > self.draft_lifetime:
            return None
        return draft

    def calls_of(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [
            call
            for call in self.calls
            if call.method == method and (chat_id is None or int(call.params.get("chat_id", 0)) == chat_id)
        ]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                recent = "\n".join(f"  {c.method} {c.status} {json.dumps(c.params)[:200]}" for c in self.calls[-15:])
                raise AssertionError(f"timed out waiting for {what}; recent calls:\n{recent}")
            await asyncio.sleep(0.02)

    # --- faults --------------------------------------------------------------------------------------------

    def fail_next(self, method: str, times: int = 1, kind: str = "429", **options: Any) -> Fault:
        fault = Fault(kind=kind, times=times, **options)
        self._faults[method].append(fault)
        return fault

    def migrate(self, old_chat_id: int, new_chat_id: int) -> None:
        """The group became a supergroup: from now on every call to the old id answers with the new one."""
        for method in ("sendMessage", "editMessageText", "editMessageReplyMarkup", "sendChatAction"):
            self._faults[method].append(Fault("migrate", times=10**9, chat_id=old_chat_id, migrate_to=new_chat_id))

    def forget(self, method: str) -> None:
        """Play an older Bot API server that does not know ``method``: 404 "Not Found: method not found"."""
        self.unknown_methods.add(method)

    def storm(self, method: str, seconds: float, retry_after: int = 1) -> None:
        """Every call of ``method`` gets 429 until the storm passes (``seconds`` 0 ends it)."""
        self._storms[method] = (time.monotonic() + seconds, retry_after)

    def set_member(self, chat_id: int, user_id: int, status: str) -> None:
        """What getChatMember answers for this user in this group: creator, administrator, member, restricted,
        left or kicked (a user seen in a group is a member until told otherwise)."""
        self.user(user_id)
        self.member_statuses[(chat_id, user_id)] = status

    def delete_message_as_user(self, chat_id: int, message_id: int) -> None:
        for message in self.chats[chat_id]:
            if message.message_id == message_id:
                message.deleted = True

    # --- injecting updates ---------------------------------------------------------------------------------

    def user(self, user_id: int) -> dict[str, Any]:
        return self.users.setdefault(user_id, {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"})

    def _chat(self, chat_id: int, chat_type: str | None) -> dict[str, Any]:
        kind = chat_type or self.chat_types.get(chat_id) or ("private" if chat_id > 0 else "supergroup")
        self.chat_types[chat_id] = kind
        chat: dict[str, Any] = {"id": chat_id, "type": kind}
        if kind == "private":
            chat["first_name"] = "User"
        else:
            chat["title"] = f"Group {chat_id}"
            if chat_id in self.forums:
                chat["is_forum"] = True
        return chat

    def add_file(self, data: bytes, file_size: int | None = None, file_path: str | None = None) -> tuple[str, str]:
        """``file_path``: what getFile will answer, to play a server that points the bot at local files."""
        file_id = f"file-{uuid.uuid4().hex}"
        unique = f"uniq-{uuid.uuid4().hex[:12]}"
        self.files[file_id] = (data, unique)
        self._sizes[file_id] = len(data) if file_size is None else file_size
        if file_path is not None:
            self._paths[file_id] = file_path
        return file_id, unique

    def push_message(
        self,
        chat_id: int,
        text: str | None = None,
        *,
        user_id: int = 1,
        chat_type: str | None = None,
        photo: bytes | None = None,
        document: tuple[bytes, str, str] | None = None,
        caption: str | None = None,
        reply_to: dict[str, Any] | None = None,
        media_group_id: str | None = None,
        thread_id: int | None = None,
        extra: dict[str, Any] | None = None,
        file_path: str | None = None,
    ) -> dict[str, Any]:
        """Queue a message from a user; returns it (as a dict) so tests can reply to it."""
        message: dict[str, Any] = {
            "message_id": next(self._user_message_ids),
            "date": int(time.time()),
            "chat": self._chat(chat_id, chat_type),
            "from": self.user(user_id),
        }
        if text is not None:
            message["text"] = text
            entities = []
            for word in text.split():
                offset = text.index(word)
                if word.startswith("/") and offset == 0:
                    entities.append({"type": "bot_command", "offset": 0, "length": utf16_len(word)})
                elif word.startswith("@"):
                    entities.append({"type": "mention", "offset": utf16_len(text[:offset]), "length": utf16_len(word)})
            if entities:
                message["entities"] = entities
        if photo is not None:
            file_id, unique = self.add_file(photo, file_path=file_path)
            message["photo"] = [
                {
                    "file_id": f"{file_id}-thumb",
                    "file_unique_id": f"{unique}-t",
                    "width": 90,
                    "height": 67,
                    "file_size": 100,
                },
                {"file_id": file_id, "file_unique_id": unique, "width": 1280, "height": 960, "file_size": len(photo)},
            ]
            self.files[f"{file_id}-thumb"] = (b"thumb", f"{unique}-t")
        if document is not None:
            data, file_name, mime = document
            file_id, unique = self.add_file(data, file_path=file_path)
            message["document"] = {
                "file_id": file_id,
                "file_unique_id": unique,
                "file_name": file_name,
                "mime_type": mime,
                "file_size": len(data),
            }
        if caption is not None:
            message["caption"] = caption
            if "@" in caption:
                word = next(w for w in caption.split() if w.startswith("@"))
                offset = utf16_len(caption[: caption.index(word)])
                message["caption_entities"] = [{"type": "mention", "offset": offset, "length": utf16_len(word)}]
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        if media_group_id is not None:
            message["media_group_id"] = media_group_id
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        message.update(extra or {})
        self.member_statuses.setdefault((chat_id, user_id), "member")
        self._push({"message": message})
        return message

    def push_media(
        self,
        chat_id: int,
        kind: str,
        data: bytes,
        *,
        duration: int = 3,
        width: int = 320,
        height: int = 240,
        file_size: int | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """A message carrying a clip or a recording, shaped as the Bot API sends it: ``kind`` is "video",
        "animation" (which Telegram also sends as ``document``, for older clients), "video_note" (square:
        ``length``, no width or height), "sticker" (a video sticker, WebM), "voice" (OGG Opus) or "audio" (a music
        file).  ``file_size`` and ``duration`` may claim what the file is not, as a hostile client's upload can."""
        file_id, unique = self.add_file(data, file_size=file_size)
        size = len(data) if file_size is None else file_size
        media: dict[str, Any] = {"file_id": file_id, "file_unique_id": unique, "file_size": size}
        extra: dict[str, Any] = {}
        if kind == "voice":
            media.update(duration=duration, mime_type="audio/ogg")
        elif kind == "audio":
            media.update(duration=duration, mime_type="audio/mpeg", file_name="recording.mp3", title="Recording")
        elif kind == "video_note":
            media.update(length=width, duration=duration)
        elif kind == "sticker":
            media.update(type="regular", width=width, height=height, is_animated=False, is_video=True)
        else:
            name, mime = ("clip.mp4", "video/mp4")
            media.update(width=width, height=height, duration=duration, mime_type=mime, file_name=name)
            if kind == "animation":
                extra["document"] = {key: media[key] for key in ("file_id", "file_unique_id", "file_size", "mime_type")}
        extra[kind] = media
        return self.push_message(chat_id, extra=extra | options.pop("extra", {}), **options)

    def push_my_chat_member(self, chat_id: int, by_user: int, *, old: str = "left", new: str = "member") -> None:
        """The bot's own membership in a group changed, as Telegram reports it: ``by_user`` added it (old "left",
        new "member"), promoted it, or removed it."""

        def member(status: str) -> dict[str, Any]:
            found: dict[str, Any] = {"status": status, "user": BOT_USER}
            if status == "administrator":
                found.update({"can_be_edited": False, "is_anonymous": False, **dict.fromkeys(ADMIN_RIGHTS, True)})
            elif status == "kicked":
                found["until_date"] = 0
            return found

        self.member_statuses[(chat_id, int(BOT_USER["id"]))] = new
        self._push(
            {
                "my_chat_member": {
                    "chat": self._chat(chat_id, None),
                    "from": self.user(by_user),
                    "date": int(time.time()),
                    "old_chat_member": member(old),
                    "new_chat_member": member(new),
                }
            }
        )

    def push_edit(self, message: dict[str, Any], *, text: str | None = None, caption: str | None = None) -> None:
        """The user edited ``message`` (as push_message returned it): Telegram sends it whole, changed, as an
        ``edited_message`` update with its edit_date."""
        edited = {**message, "edit_date": int(time.time())}
        if text is not None:
            edited["text"] = text
        if caption is not None:
            edited["caption"] = caption
            edited.pop("caption_entities", None)
        self._push({"edited_message": edited})

    def bot_message_dict(self, chat_id: int, message_id: int) -> dict[str, Any]:
        for message in self.chats[chat_id]:
            if message.message_id == message_id:
                return self._message_json(message)
        raise KeyError(message_id)

    def push_callback(self, chat_id: int, message_id: int, data: str, user_id: int = 1) -> str:
        """A press of an inline button; returns the query's id (see ``callback_queries``)."""
        query_id = uuid.uuid4().hex
        self.callback_queries[query_id] = None
        self._push(
            {
                "callback_query": {
                    "id": query_id,
                    "from": self.user(user_id),
                    "chat_instance": str(chat_id),
                    "message": self.bot_message_dict(chat_id, message_id),
                    "data": data,
                }
            }
        )
        return query_id

    def _push(self, update: dict[str, Any]) -> None:
        update = {"update_id": next(self._update_ids), **update}
        parsed = Update.de_json(update, None)  # a malformed update would otherwise be fetched forever
        assert parsed is not None
        self._updates.append(update)
        self._new_update.set()

    # --- HTTP ----------------------------------------------------------------------------------------------

    async def _params(self, request: web.Request) -> dict[str, Any]:
        if request.content_type == "application/json":
            raw = await request.json()
        elif request.content_type.startswith("multipart/"):
            raw = {}
            async for part in await request.multipart():
                raw[part.name] = await part.text()  # type: ignore[union-attr]
        else:
            raw = dict(await request.post())
        params: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(value, str):
                try:
                    params[key] = json.loads(value) if value[:1] in "[{" or value in ("true", "false") else value
                except json.JSONDecodeError:
                    params[key] = value
            else:
                params[key] = value
        params.update(request.query)
        return params

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return self._error(method, {}, ApiError(401, "Unauthorized"))
        params = await self._params(request)
        try:
            await self._inject(method, params)
            handler = None if method in self.unknown_methods else getattr(self, f"_api_{method}", None)
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            result = await handler(params)
        except ApiError as error:
            return self._error(method, params, error)
        self.calls.append(Call(method, params, 200, time.monotonic()))
        return web.json_response({"ok": True, "result": result})

    async def _not_found(self, request: web.Request) -> web.Response:
        """What the Bot API answers for a path that is not /bot<token>/<method> (a base URL without /bot)."""
        return self._error(request.path, {}, ApiError(404, "Not Found"))

    def _error(self, method: str, params: dict[str, Any], error: ApiError) -> web.Response:
        self.calls.append(Call(method, params, error.code, time.monotonic()))
        body: dict[str, Any] = {"ok": False, "error_code": error.code, "description": error.description}
        if error.parameters:
            body["parameters"] = error.parameters
        return web.json_response(body, status=error.code)

    async def _inject(self, method: str, params: dict[str, Any]) -> None:
        until, retry_after = self._storms.get(method, (0.0, 1))
        if time.monotonic() < until:
            raise ApiError(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})
        chat = params.get("chat_id")
        for fault in self._faults[method]:
            if fault.times <= 0 or (fault.chat_id is not None and chat is not None and int(chat) != fault.chat_id):
                continue
            if fault.when is not None and not fault.when(params):
                continue
            fault.times -= 1
            if fault.hold is not None:
                await fault.hold.wait()
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
                return
            if fault.kind == "429":
                raise ApiError(
                    429, f"Too Many Requests: retry after {fault.retry_after}", {"retry_after": fault.retry_after}
                )
            if fault.kind == "403":
                raise ApiError(403, fault.description or "Forbidden: bot was blocked by the user")
            if fault.kind == "5xx":
                raise ApiError(502, "Bad Gateway")
            if fault.kind == "migrate":
                raise ApiError(
                    400,
                    "Bad Request: group chat was upgraded to a supergroup chat",
                    {"migrate_to_chat_id": fault.migrate_to},
                )
            raise ApiError(400, fault.description or "Bad Request: injected")

    async def _download(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        file_id = path.rsplit("/", 1)[-1]
        if request.match_info["token"] != self.token or file_id not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[file_id][0])

    # --- methods -------------------------------------------------------------------------------------------

    async def _api_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            **BOT_USER,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _api_deleteWebhook(self, params: dict[str, Any]) -> bool:
        if params.get("drop_pending_updates") in (True, "true"):
            self._updates.clear()
        self.webhook_url = self.webhook_secret = None
        return True

    async def _api_setWebhook(self, params: dict[str, Any]) -> bool:
        if params.get("drop_pending_updates") in (True, "true"):
            self._updates.clear()
        self.webhook_url = params.get("url") or None
        self.webhook_secret = params.get("secret_token") or None
        self._new_update.set()
        return True

    async def _api_logOut(self, params: dict[str, Any]) -> bool:
        return True

    async def _api_close(self, params: dict[str, Any]) -> bool:
        return True

    async def _api_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook_url is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook "
                "to delete the webhook first",
            )
        offset = int(params.get("offset", 0) or 0)
        timeout = float(params.get("timeout", 0) or 0)
        if offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        deadline = time.monotonic() + timeout
        while not self._updates and not self._closing and time.monotonic() < deadline:
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                break
        return list(self._updates[:100])

    def _check_text(self, text: str, entities: list[dict[str, Any]] | None) -> None:
        if not text or not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        length = utf16_len(text)
        if length > TEXT_LIMIT:
            raise ApiError(400, "Bad Request: message is too long")
        for entity in entities or []:
            if entity["offset"] < 0 or entity["length"] <= 0 or entity["offset"] + entity["length"] > length:
                raise ApiError(400, "Bad Request: can't parse entities: entity beyond the end of the text")

    def _find(self, chat_id: int, message_id: int, action: str = "edit") -> SentMessage:
        for message in self.chats[chat_id]:
            if message.message_id == message_id and not message.deleted:
                return message
        raise ApiError(400, f"Bad Request: message to {action} not found")

    def _message_json(self, message: SentMessage) -> dict[str, Any]:
        data: dict[str, Any] = {
            "message_id": message.message_id,
            "date": int(time.time()),
            "chat": self._chat(message.chat_id, None),
            "from": BOT_USER,
            "text": message.text,
        }
        if message.entities:
            data["entities"] = message.entities
        if message.reply_markup:
            data["reply_markup"] = message.reply_markup
        if message.thread_id:
            data["message_thread_id"] = message.thread_id
            data["is_topic_message"] = True
        return data

    async def _api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        text = str(params.get("text", ""))
        if params.get("parse_mode"):
            raise ApiError(400, "Bad Request: this stand-in expects entities, not parse_mode")
        entities = params.get("entities")
        self._check_text(text, entities)
        reply = params.get("reply_parameters") or {}
        message = SentMessage(
            chat_id=chat_id,
            message_id=next(self._bot_message_ids),
            text=text,
            entities=entities or [],
            reply_markup=params.get("reply_markup"),
            reply_to=reply.get("message_id") if isinstance(reply, dict) else None,
            thread_id=int(params["message_thread_id"]) if params.get("message_thread_id") else None,
            edits=[text],
        )
        self.chats[chat_id].append(message)
        self._shown_drafts.pop((chat_id, message.thread_id or 0), None)  # a message from the bot ends the draft
        return self._message_json(message)

    async def _api_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        message = self._find(chat_id, int(params["message_id"]))
        text = str(params.get("text", ""))
        entities = params.get("entities") or []
        self._check_text(text, entities)
        markup = params.get("reply_markup")
        if text == message.text and entities == message.entities and markup == message.reply_markup:
            raise ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and reply markup are exactly "
                "the same as a current content and reply markup of the message",
            )
        message.text, message.entities, message.reply_markup = text, entities, markup
        message.edits.append(text)
        return self._message_json(message)

    async def _api_editMessageReplyMarkup(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._find(int(params["chat_id"]), int(params["message_id"]))
        message.reply_markup = params.get("reply_markup")
        return self._message_json(message)

    async def _api_deleteMessage(self, params: dict[str, Any]) -> bool:
        self._find(int(params["chat_id"]), int(params["message_id"]), "delete").deleted = True
        return True

    async def _api_sendChatAction(self, params: dict[str, Any]) -> bool:
        return True

    async def _api_sendMessageDraft(self, params: dict[str, Any]) -> bool:
        """As Telegram documents it: private chats only, a non-zero ``draft_id``, 0-4096 characters (an empty
        text shows "Thinking…"); the same ``draft_id`` changes the shown draft, another one replaces it."""
        chat_id = int(params["chat_id"])
        if chat_id not in self.chat_types:
            raise ApiError(400, "Bad Request: chat not found")
        if self.chat_types[chat_id] != "private":
            raise ApiError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        try:
            draft_id = int(params.get("draft_id", 0))
        except ValueError:
            draft_id = 0
        if draft_id == 0:
            raise ApiError(400, "Bad Request: RANDOM_ID_INVALID")
        if params.get("parse_mode"):
            raise ApiError(400, "Bad Request: this stand-in expects entities, not parse_mode")
        text = str(params.get("text", ""))
        if utf16_len(text) > TEXT_LIMIT:
            raise ApiError(400, "Bad Request: message is too long")
        thread_id = int(params.get("message_thread_id") or 0)
        draft = Draft(chat_id, thread_id, draft_id, text, time.monotonic())
        self.drafts[chat_id].append(draft)
        self._shown_drafts[(chat_id, thread_id)] = draft
        return True

    async def _api_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        """Each query is answered once, as Telegram allows; ``text`` is the notification the user sees."""
        query_id = str(params.get("callback_query_id"))
        if query_id not in self.callback_queries or self.callback_queries[query_id] is not None:
            raise ApiError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        self.callback_queries[query_id] = str(params.get("text") or "")
        return True

    async def _api_setMyCommands(self, params: dict[str, Any]) -> bool:
        self.commands = list(params.get("commands", []))
        return True

    async def _api_getMyCommands(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self.commands

    async def _api_getChatMember(self, params: dict[str, Any]) -> dict[str, Any]:
        """As the Bot API documents it: a ChatMember of the kind its status names, with every field that kind
        requires; an unknown chat or user is a 400."""
        chat_id, user_id = int(params["chat_id"]), int(params["user_id"])
        if chat_id not in self.chat_types:
            raise ApiError(400, "Bad Request: chat not found")
        if user_id not in self.users and user_id != BOT_USER["id"]:
            raise ApiError(400, "Bad Request: user not found")
        user = BOT_USER if user_id == BOT_USER["id"] else self.users[user_id]
        if self.chat_types[chat_id] == "private":
            status = "member" if user_id in (chat_id, BOT_USER["id"]) else "left"
        else:
            status = self.member_statuses.get((chat_id, user_id), "left")
        member: dict[str, Any] = {"status": status, "user": user}
        if status == "creator":
            member["is_anonymous"] = False
        elif status == "administrator":
            member.update({"can_be_edited": False, "is_anonymous": False})
            member.update(dict.fromkeys(ADMIN_RIGHTS, True))
        elif status == "restricted":
            member.update({"is_member": True, "until_date": 0})
            member.update(dict.fromkeys(RESTRICTED_RIGHTS, False))
        elif status == "kicked":
            member["until_date"] = 0
        assert ChatMember.de_json(member, None) is not None  # every field its kind requires is there
        return member

    async def _api_leaveChat(self, params: dict[str, Any]) -> bool:
        """As the Bot API documents it: the bot leaves a group, supergroup or channel; an unknown chat is a 400,
        a chat it is not in a 403."""
        chat_id = int(params["chat_id"])
        if chat_id not in self.chat_types:
            raise ApiError(400, "Bad Request: chat not found")
        if self.member_statuses.get((chat_id, int(BOT_USER["id"]))) in ("left", "kicked"):
            raise ApiError(403, "Forbidden: bot is not a member of the supergroup chat")
        self.member_statuses[(chat_id, int(BOT_USER["id"]))] = "left"
        self.left_chats.append(chat_id)
        return True

    async def _api_getFile(self, params: dict[str, Any]) -> dict[str, Any]:
        file_id = str(params["file_id"])
        if file_id not in self.files:
            raise ApiError(400, "Bad Request: invalid file_id")
        size = self._sizes.get(file_id, len(self.files[file_id][0]))
        if size > FILE_LIMIT:
            raise ApiError(400, "Bad Request: file is too big")
        # A path that never exists locally: PTB reads existing local paths instead of downloading.
        return {
            "file_id": file_id,
            "file_unique_id": self.files[file_id][1],
            "file_size": size,
            "file_path": self._paths.get(file_id, f"photos/{uuid.uuid4().hex}/{file_id}"),
        }
