"""A fake Discord (REST, gateway, attachment CDN) on loopback that enforces Discord's rules; it never calls out.

Start it with pytest-aiohttp and point discord.py at it (restored by monkeypatch)::

    fake = await start_fake_discord(aiohttp_server, clock=ManualClock())
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    # a subprocess bot gets the same two URLs through its config, and fake.bot_token as its token

Members act through ``slash``, ``autocomplete``, ``click`` and ``submit_modal``; tests wait with ``wait_for`` and
read ``requests``, ``messages_in``, ``edits_of``, ``FakeInteraction.original()`` and ``FakeInteraction.choices``.
``unknown_routes`` lists every request the fake could not route, so a test can assert the bot called nothing
unexpected. Discord's global limit (``global_rate``) answers a global 429; ``rate_stats()`` measures the request
rates a test or benchmark produced, and ``FakeInteraction.response_latency_s`` the time to an interaction's answer.

Every JSON body (and multipart ``payload_json``) and query parameter is checked against Discord's published
OpenAPI spec, kept to the docs where they are stricter and relaxed where Discord takes what the spec refuses
(``tests.specs.discord_rules``). A refusal is Discord's 400/50035 with the nested ``errors``, and ``refused`` lists
those requests, so a test can assert that Discord would have taken everything the bot sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import itertools
import json
import logging
import math
import mimetypes
import re
import secrets
import struct
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, WSCloseCode, WSMsgType, web

from tests.specs.discord_rules import (
    FormError,
    OperationSchema,
    autocomplete_result_problems,
    command_problems,
    operation_schema,
)

log = logging.getLogger(__name__)

BODY_JSON = web.RequestKey("fake_discord_json", object)  # what the handler parsed, for the request log
BODY_FILES = web.RequestKey("fake_discord_files", list[str])

API = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
STATIC_EPOCH_MS = 1_672_531_200_000  # 2023-01-01: ids of the fixed world (guild, channels, users)
MAX_REQUEST_BYTES = 25 * 1024 * 1024

VIEW_CHANNEL, SEND_MESSAGES, MANAGE_MESSAGES = 1 << 10, 1 << 11, 1 << 13
EMBED_LINKS, ATTACH_FILES, READ_MESSAGE_HISTORY = 1 << 14, 1 << 15, 1 << 16
ADMINISTRATOR, ADD_REACTIONS, USE_EXTERNAL_EMOJIS = 1 << 3, 1 << 6, 1 << 18
USE_APPLICATION_COMMANDS, SEND_MESSAGES_IN_THREADS = 1 << 31, 1 << 38
ALL_PERMISSIONS = (1 << 53) - 1
EVERYONE_PERMISSIONS = sum(  # distinct bits, so the sum is their union
    [
        *(VIEW_CHANNEL, SEND_MESSAGES, EMBED_LINKS, ATTACH_FILES, READ_MESSAGE_HISTORY, ADD_REACTIONS),
        *(USE_EXTERNAL_EMOJIS, USE_APPLICATION_COMMANDS, SEND_MESSAGES_IN_THREADS),
    ]
)

EPHEMERAL, LOADING, IS_COMPONENTS_V2 = 1 << 6, 1 << 7, 1 << 15
CHANNEL_MENTIONS = ("users", "roles", "everyone")  # defaults when allowed_mentions is absent (reference 1.5)
WEBHOOK_MENTIONS = ("users",)
OPTION_TYPES = {str: 3, bool: 5, int: 4, float: 10}  # looked up by exact type, so True is BOOLEAN, not INTEGER
OPTION_VALUES: dict[int, tuple[type, ...]] = {3: (str,), 4: (int,), 5: (bool,), 6: (str,), 10: (int, float), 11: (str,)}
AUTOCOMPLETE, AUTOCOMPLETE_RESULT = 4, 8  # the interaction type and the callback type that answers it
AUTOCOMPLETE_OPTION_TYPES = (3, 4, 10)  # STRING, INTEGER, NUMBER: the only options Discord autocompletes


def snowflake(unix_ms: float, increment: int = 0) -> int:
    """A snowflake for ``unix_ms``; discord.py derives ``created_at`` and ``expires_at`` from it."""
    return ((int(unix_ms) - DISCORD_EPOCH_MS) << 22) | (increment & 0x3FFFFF)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    # exactly "application/json": discord.py compares the header verbatim and web.json_response adds a charset
    body = json.dumps(data).encode()
    return web.Response(status=status, body=body, headers={**(headers or {}), "Content-Type": "application/json"})


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height as Discord reports them for images; None for other files."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    from PIL import Image  # lazily: only non-PNG uploads need it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb-sized test images only need their header read
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class ApiError(Exception):
    """An error answer in Discord's shape; raised by handlers and turned into a response by the middleware."""

    def __init__(
        self,
        status: int,
        message: str,
        code: int = 0,
        *,
        errors: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.body = body or {"message": message, "code": code, **({"errors": errors} if errors else {})}
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return json_response(self.body, self.status, self.headers)


def invalid_form(path: str, message: str, code: str = "BASE_TYPE_INVALID") -> ApiError:
    """400/50035 with Discord's nested ``errors`` object (``"embeds.0.title"`` -> nested keys; ``""``: the body)."""
    where: list[str | int] = [*path.split(".")] if path else []
    return refusal([(where, code, message)])


def refusal(problems: Iterable[FormError]) -> ApiError:
    """400/50035 "Invalid Form Body", each problem under its path: ``{"embeds": {"0": {"title": {"_errors": …}}}}``."""
    errors: dict[str, Any] = {}
    for path, code, message in problems:
        node = errors
        for key in path:
            node = node.setdefault(str(key), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})
    return ApiError(400, "Invalid Form Body", 50035, errors=errors)


def exempt_from_global(path: str) -> bool:
    """Whether Discord leaves this request out of the bot's global limit: the interaction endpoints (the callback and
    the ``/webhooks/{app}/{token}`` family) are exempt [docs rate-limits], and so is all that is not the API (the
    fake's CDN downloads, the gateway)."""
    if not path.startswith(API + "/"):
        return True
    route = path.removeprefix(API)
    return bool(re.fullmatch(r"/interactions/[^/]+/[^/]+/callback|/webhooks/[^/]+/[^/]+(/.*)?", route))


@dataclass
class SlidingWindow:
    """At most ``limit`` accepted requests in any ``window_s``; ``now`` is passed in, so tests choose the times."""

    limit: int
    window_s: float
    accepted: deque[float] = field(default_factory=deque)

    def admit(self, now: float) -> float | None:
        """None when the request is accepted (and counted); else the seconds until one is (3 decimals, > 0), and the
        refused request is not counted."""
        while self.accepted and now - self.accepted[0] >= self.window_s:
            self.accepted.popleft()
        if len(self.accepted) >= self.limit:
            return max(0.001, round(self.accepted[0] + self.window_s - now, 3))
        self.accepted.append(now)
        return None


def peak_in_window(times: list[float], window_s: float = 1.0) -> int:
    """The most of the sorted ``times`` inside any half-open window of ``window_s``, by a two-pointer sweep."""
    peak, first = 0, 0
    for last, moment in enumerate(times):
        while moment - times[first] >= window_s:
            first += 1
        peak = max(peak, last - first + 1)
    return peak


class InvocationError(Exception):
    """The Discord client would not let the member do this (hidden command, bad option, missing button)."""


class ManualClock:
    """A clock a test moves by hand: ``clock.advance(901)`` expires every interaction token."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class StoredAttachment:
    id: int
    filename: str
    data: bytes = field(repr=False)
    content_type: str | None
    url: str
    description: str | None = None
    ephemeral: bool = False
    dims: tuple[int, int] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.dims = image_size(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.dims:
            out["width"], out["height"] = self.dims
        if self.description:
            out["description"] = self.description
        if self.ephemeral:
            out["ephemeral"] = True
        return out


@dataclass
class FakeMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author: dict[str, Any]
    type: int = 0
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[StoredAttachment] = field(default_factory=list)
    flags: int = 0
    mentions: list[dict[str, Any]] = field(default_factory=list)
    mention_roles: list[str] = field(default_factory=list)
    mention_everyone: bool = False
    allowed_mentions: dict[str, Any] | None = None
    nonce: str | int | None = None
    webhook_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None  # a reply: the message it answers (type 19)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    edited_at: datetime | None = None
    deleted: bool = False

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    @property
    def files(self) -> dict[str, bytes]:
        return {a.filename: a.data for a in self.attachments}

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in walk_components(self.components) if "custom_id" in c]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "channel_id": str(self.channel_id),
            "author": self.author,
            "content": self.content,
            "timestamp": iso(self.created_at),
            "edited_timestamp": iso(self.edited_at),
            "tts": False,
            "pinned": False,
            "mention_everyone": self.mention_everyone,
            "mentions": self.mentions,
            "mention_roles": self.mention_roles,
            "attachments": [a.to_dict() for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "flags": self.flags,
        }
        if self.guild_id is not None:
            out["guild_id"] = str(self.guild_id)
        if self.nonce is not None:
            out["nonce"] = self.nonce
        if self.webhook_id is not None:
            out["webhook_id"] = out["application_id"] = str(self.webhook_id)
        if self.interaction_metadata is not None:
            out["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            out["message_reference"] = self.message_reference
        return out


def walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every component, nested ones included (action rows, sections, containers, labels)."""
    for comp in components:
        yield comp
        yield from walk_components(comp.get("components", []))
        for key in ("accessory", "component"):
            if isinstance(comp.get(key), dict):
                yield from walk_components([comp[key]])


@dataclass
class Callback:
    type: int
    time: float  # on the fake's clock
    data: dict[str, Any]
    status: int = 0
    # the lambda reaches the time module, which the ``time`` field hides in the class body
    real_time: float = field(default_factory=lambda: time.monotonic())  # when it arrived, whatever ``clock`` is


@dataclass
class FakeInteraction:
    fake: FakeDiscord = field(repr=False)
    id: int
    token: str
    type: int
    user: str
    channel_id: int
    created_at: float  # on the fake's clock
    payload: dict[str, Any] = field(repr=False)
    source_message_id: int | None = None  # the message a clicked component sits on
    callbacks: list[Callback] = field(default_factory=list)
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    modal: dict[str, Any] | None = None
    focused: dict[str, Any] | None = None  # autocomplete: the option being typed, as sent (name, type, value)
    choices: list[dict[str, Any]] | None = None  # autocomplete: the choices of the accepted answer (callback 8)
    real_time: float = field(default_factory=time.monotonic)  # when dispatched, whatever ``clock`` is

    @property
    def acknowledged(self) -> bool:
        return any(cb.status == 200 for cb in self.callbacks)

    @property
    def response_latency_s(self) -> float | None:
        """Real seconds from the dispatch to the accepted callback (interaction-to-callback latency), or None."""
        answer = next((cb for cb in self.callbacks if cb.status == 200), None)
        return None if answer is None else answer.real_time - self.real_time

    def original(self) -> FakeMessage | None:
        """The current state of the original response (the loading message after a defer), or None."""
        msg = self.fake.messages.get(self.original_message_id or 0)
        return None if msg is None or msg.deleted else msg

    def followups(self) -> list[FakeMessage]:
        return [m for i in self.followup_ids if not (m := self.fake.messages[i]).deleted]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    time: float  # on the fake's clock
    json: Any
    route_key: str
    status: int
    query: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    error: dict[str, Any] | None = None  # the error body of a refusal (``errors`` holds Discord's nested problems)
    # the lambda reaches the time module, which the ``time`` field hides in the class body
    real_time: float = field(default_factory=lambda: time.monotonic())  # when recorded, whatever ``clock`` is
    exempt: bool = False  # left out of the global limit (interaction routes, CDN): see exempt_from_global


@dataclass(frozen=True)
class RateStats:
    """Request rates over a span of real time; peaks are the most requests in any sliding 1-second window."""

    total: int
    peak_per_s: int  # every route
    peak_global_per_s: int  # only the routes the global limit counts
    mean_per_s: float
    rate_limited: int  # 429 answers, global or per route


def measure_rates(
    requests: Iterable[RecordedRequest], since: float | None = None, until: float | None = None
) -> RateStats:
    """``RateStats`` of the requests recorded within [since, until] (``real_time``). The mean divides by that span,
    or by first..last request where a bound is not given; a span of zero counts as one second."""
    chosen = [
        r for r in requests if (since is None or r.real_time >= since) and (until is None or r.real_time <= until)
    ]
    times = sorted(r.real_time for r in chosen)
    if not times:
        return RateStats(total=0, peak_per_s=0, peak_global_per_s=0, mean_per_s=0.0, rate_limited=0)
    start = times[0] if since is None else since
    span = (times[-1] if until is None else until) - start
    return RateStats(
        total=len(times),
        peak_per_s=peak_in_window(times),
        peak_global_per_s=peak_in_window(sorted(r.real_time for r in chosen if not r.exempt)),
        mean_per_s=len(times) / span if span > 0 else float(len(times)),
        rate_limited=sum(1 for r in chosen if r.status == 429),
    )


@dataclass
class Upload:
    filename: str
    data: bytes
    content_type: str | None


@dataclass
class GatewaySession:
    ws: web.WebSocketResponse
    session_id: str = field(default_factory=lambda: secrets.token_hex(16))
    seq: int = 0
    ready: bool = False
    heartbeats: int = 0


class FakeDiscord:
    """One application, one bot, one guild (#general, age-restricted #nsfw-art), members alice, bob, mod, admin."""

    def __init__(
        self,
        *,
        token_ttl_s: float = 900,
        first_response_deadline_s: float = 3.0,
        edit_rate: tuple[int, float] = (5, 5.0),
        global_rate: tuple[int, float] | None = (50, 1.0),
        upload_limit_bytes: int = 10 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        ratelimit_headers: bool = True,
        bot_token: str = "fake-bot-token",
        upload_gate: asyncio.Event | None = None,
        upload_gate_after: int = 0,
        upload_hold: asyncio.Event | None = None,
        cdn_hold: asyncio.Event | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        validate: bool = True,
    ) -> None:
        """``edit_rate`` is (edits, window_s) per message id over every PATCH route, measured in real time
        because discord.py sleeps in real time before retrying a 429. With ``ratelimit_headers`` successful
        edits carry X-RateLimit-* so discord.py paces itself; without them every excess edit gets a 429.
        ``global_rate`` is (requests, window_s) for the bot's global limit over every route it counts (not the
        interaction callback, the ``/webhooks/{app}/{token}`` family or the CDN), also in real time: the next
        request gets a global 429 and is not counted. None turns the limit off."""
        self.token_ttl_s = token_ttl_s
        self.first_response_deadline_s = first_response_deadline_s
        self.edit_rate = edit_rate
        self.global_rate = global_rate
        self.upload_limit_bytes = upload_limit_bytes
        self.clock = clock
        self.ratelimit_headers = ratelimit_headers
        self.bot_token = bot_token
        # While unset, a request that uploads files is carried out but its answer is held back: the bot can be
        # killed after Discord posted the files and before it learnt so.
        self.upload_gate = upload_gate
        self.upload_gate_after = upload_gate_after  # uploads answered at once before the gate applies
        # While unset, a request that uploads files is held before Discord acts on it: a bot killed meanwhile has
        # fetched its result but posted nothing.
        self.upload_hold = upload_hold
        self.uploads_held = 0
        self.cdn_hold = cdn_hold  # while unset, attachment downloads wait: the bot is still checking the upload
        self.cdn_waiting = 0
        self.uploads_waiting = 0
        self.uploads_seen = 0
        self.max_request_bytes = max_request_bytes
        # Benchmarks turn the schema checks off: they cost the fake ~2 ms a body, which would be timed as the bot's.
        self.validate = validate
        self.base_url: str | None = None

        static = (snowflake(STATIC_EPOCH_MS, n) for n in itertools.count(1))
        self.application_id = next(static)
        self.guild_id = next(static)
        self.users: dict[str, dict[str, Any]] = {
            name: {"id": str(next(static)), "username": name, "global_name": name.title(), "discriminator": "0"}
            | {"avatar": None, "bot": name == "fluxpaint", "public_flags": 0}
            for name in ("fluxpaint", "alice", "bob", "mod", "admin")
        }
        self.bot_user = self.users["fluxpaint"]
        self.roles: dict[str, dict[str, Any]] = {}
        for position, (name, perms) in enumerate(
            [
                ("@everyone", EVERYONE_PERMISSIONS),
                ("fluxpaint", EVERYONE_PERMISSIONS),
                ("Moderator", MANAGE_MESSAGES),
                ("Admin", ADMINISTRATOR),
            ]
        ):
            role_id = self.guild_id if position == 0 else next(static)
            self.roles[name] = {"id": str(role_id), "name": name, "permissions": str(perms), "position": position}
            self.roles[name] |= {"color": 0, "hoist": False, "managed": name == "fluxpaint", "mentionable": False}
            self.roles[name] |= {"flags": 0, "icon": None, "unicode_emoji": None}
        self.roles["fluxpaint"]["tags"] = {"bot_id": self.bot_user["id"]}
        self.member_roles = {"fluxpaint": ["fluxpaint"], "alice": [], "bob": [], "mod": ["Moderator"]}
        self.member_roles["admin"] = ["Admin"]
        self.channels: dict[int, dict[str, Any]] = {}
        for position, (name, nsfw) in enumerate([("general", False), ("nsfw-art", True)]):
            cid = next(static)
            self.channels[cid] = {"id": str(cid), "type": 0, "name": name, "position": position, "nsfw": nsfw}
            self.channels[cid] |= {"guild_id": str(self.guild_id), "parent_id": None, "topic": None, "flags": 0}
            self.channels[cid] |= {"permission_overwrites": [], "rate_limit_per_user": 0, "last_message_id": None}

        self.forbidden_channels: set[int] = set()  # bot routes there answer 403/50013
        self.messages: dict[int, FakeMessage] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.attachments: dict[int, StoredAttachment] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}  # None: global commands
        self.command_syncs: list[tuple[int | None, list[dict[str, Any]]]] = []
        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[str] = []
        self.errors: list[str] = []  # crashes of the fake itself, answered with 400
        self.sessions: list[GatewaySession] = []
        self._ids = itertools.count(1)
        self._by_token: dict[str, FakeInteraction] = {}
        self._edit_windows: dict[int, deque[float]] = {}
        self._global_window: SlidingWindow | None = None
        self._edit_times: dict[int, list[float]] = {}
        self._nonces: dict[tuple[int, str], int] = {}
        self._changed = asyncio.Condition()
        self._cdn_key = secrets.token_bytes(16)
        self._spec_paths: dict[tuple[str, str], str] = {}  # (method, route) -> its path in the OpenAPI spec

    # wiring

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=2 * MAX_REQUEST_BYTES)
        commands, guild_commands = "/applications/{app}/commands", "/applications/{app}/guilds/{gid}/commands"
        webhook, webhook_message = "/webhooks/{app}/{token}", "/webhooks/{app}/{token}/messages/{mid}"
        messages, message = "/channels/{cid}/messages", "/channels/{cid}/messages/{mid}"
        # the route's path in the OpenAPI spec, whose schemas its requests must pass (operation_schema)
        spec_paths = {
            commands: "/applications/{application_id}/commands",
            guild_commands: "/applications/{application_id}/guilds/{guild_id}/commands",
            "/interactions/{iid}/{token}/callback": "/interactions/{interaction_id}/{interaction_token}/callback",
            webhook: "/webhooks/{webhook_id}/{webhook_token}",
            webhook_message: "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
            messages: "/channels/{channel_id}/messages",
            message: "/channels/{channel_id}/messages/{message_id}",
        }
        routes = [
            ("GET", "/users/@me", self._get_me),
            ("GET", "/oauth2/applications/@me", self._get_application),
            ("GET", "/gateway", self._get_gateway),
            ("GET", "/gateway/bot", self._get_gateway_bot),
            ("GET", commands, self._get_commands),
            ("PUT", commands, self._put_commands),
            ("GET", guild_commands, self._get_commands),
            ("PUT", guild_commands, self._put_commands),
            ("POST", "/interactions/{iid}/{token}/callback", self._callback),
            ("POST", webhook, self._followup),
            ("GET", webhook_message, self._webhook_get),
            ("PATCH", webhook_message, self._webhook_edit),
            ("DELETE", webhook_message, self._webhook_delete),
            ("GET", "/channels/{cid}", self._get_channel),
            ("GET", messages, self._channel_history),
            ("POST", messages, self._channel_send),
            ("GET", message, self._channel_get),
            ("PATCH", message, self._channel_edit),
            ("DELETE", message, self._channel_delete),
            ("POST", "/users/@me/channels", self._create_dm),
            ("GET", "/users/{uid}", self._get_user),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, API + path, handler)
            if path in spec_paths:
                self._spec_paths[method, API + path] = spec_paths[path]
        app.router.add_get("/cdn/attachments/{aid}/{filename}", self._cdn)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        app.on_shutdown.append(self._close_sockets)
        return app

    @property
    def api_base(self) -> str:
        return f"{self._base()}{API}"

    @property
    def gateway_url(self) -> str:
        return "ws" + self._base().removeprefix("http") + "/gateway"

    def _base(self) -> str:
        if self.base_url is None:
            raise RuntimeError("FakeDiscord.base_url is unset: use start_fake_discord() or set it after start")
        return self.base_url

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        if request.path == "/gateway":
            return await handler(request)
        if self.base_url is None:
            self.base_url = f"{request.scheme}://{request.host}"
        if self.upload_hold is not None and request.content_type == "multipart/form-data":
            self.uploads_held += 1
            await self._notify()
            await self.upload_hold.wait()
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)  # the sender is gone: Discord never acted on it
        error: dict[str, Any] | None = None
        exempt = exempt_from_global(request.path)
        try:
            if not exempt:
                self._count_global()  # before any other check: Discord counts whatever reaches it
            if self.validate and (problems := self._operation(request).query_problems(request.query)):
                raise refusal(problems)
            response = await handler(request)
        except ApiError as err:
            response, error = err.response(), err.body
            if err.body.get("code") == 50035:
                log.warning("fake Discord refused %s %s: %s", request.method, request.path, err.body.get("errors"))
        except Exception as exc:  # a bug in the fake must fail the test, not pass for a Discord outage (5xx retries)
            log.exception("fake Discord failed on %s %s", request.method, request.path)
            self.errors.append(f"{request.method} {request.path}: {exc!r}")
            response = ApiError(400, f"fake Discord failed: {exc!r}").response()
        if request.get(BODY_FILES):
            self.uploads_seen += 1
            if self.upload_gate is not None and self.uploads_seen > self.upload_gate_after:
                self.uploads_waiting += 1
                await self._notify()
                await self.upload_gate.wait()
        resource = request.match_info.route.resource
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                time=self.clock(),
                json=request.get(BODY_JSON),
                route_key=f"{request.method} {resource.canonical if resource else request.path}",
                status=response.status,
                query=dict(request.query),
                files=tuple(request.get(BODY_FILES, ())),
                error=error,
                real_time=time.monotonic(),
                exempt=exempt,
            )
        )
        await self._notify()
        return response

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _operation(self, request: web.Request) -> OperationSchema:
        """The spec's rules for this request's route (none for routes the bot subset lacks)."""
        resource = request.match_info.route.resource
        path = self._spec_paths.get((request.method, resource.canonical if resource else ""), "")
        if request.match_info.get("mid") == "@original":
            path = path.replace("{message_id}", "@original")
        return operation_schema(request.method, path)

    def _check_body(self, request: web.Request, payload: Any) -> None:
        """Raises: ApiError 400/50035 with every problem Discord would report for this body."""
        if self.validate and (problems := self._operation(request).body_problems(payload)):
            raise refusal(problems)

    # what tests use

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> None:  # noqa: ASYNC109
        """Return once ``predicate()`` holds; it is re-checked after every request and gateway event."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            seen = "\n".join(f"  {r.status} {r.method} {r.path}" for r in self.requests[-15:])
            errors = "".join(f"\nfake failed: {e}" for e in self.errors)
            raise TimeoutError(f"condition not met within {timeout}s; last requests:\n{seen}{errors}") from None

    async def wait_ready(self, timeout: float = 10) -> None:  # noqa: ASYNC109
        """Wait until a bot has identified and received READY and GUILD_CREATE."""
        await self.wait_for(lambda: any(s.ready and not s.ws.closed for s in self.sessions), timeout)

    @property
    def rate_limited(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.status == 429]

    @property
    def global_limited(self) -> list[RecordedRequest]:
        """The 429s of the global limit (``rate_limited`` also lists the per-route ones)."""
        return [r for r in self.rate_limited if (r.error or {}).get("global") is True]

    def rate_stats(self, since: float | None = None, until: float | None = None) -> RateStats:
        """Request rates within [since, until] in real time (``time.monotonic()``, as ``RecordedRequest.real_time``)."""
        return measure_rates(self.requests, since, until)

    @property
    def refused(self) -> list[RecordedRequest]:
        """Requests answered 400/50035 "Invalid Form Body": what real Discord would refuse. ``r.error`` says why."""
        return [r for r in self.requests if r.status == 400 and (r.error or {}).get("code") == 50035]

    def channel_id(self, channel: str | int) -> int:
        """A channel's id from its name; ``"@alice"`` is the bot's DM channel with alice, once it exists."""
        if isinstance(channel, int):
            return channel
        for cid, data in self.channels.items():
            recipients = [f"@{u['username']}" for u in data.get("recipients", [])]
            if data.get("name") == channel or channel in recipients:
                return cid
        raise KeyError(f"no channel named {channel!r}")

    def add_member(self, name: str, roles: tuple[str, ...] = ()) -> int:
        """A further member of the guild (for crowds); known to the bot through their interactions."""
        if name not in self.users:
            uid = self._new_id()
            self.users[name] = {"id": str(uid), "username": name, "global_name": name.title(), "discriminator": "0"}
            self.users[name] |= {"avatar": None, "bot": False, "public_flags": 0}
            self.member_roles[name] = list(roles)
        return int(self.users[name]["id"])

    def user_id(self, name: str) -> int:
        return int(self.users[name]["id"])

    def message(self, message_id: int) -> FakeMessage:
        return self.messages[message_id]

    def messages_in(self, channel: str | int) -> list[FakeMessage]:
        cid = self.channel_id(channel)
        return [m for _, m in sorted(self.messages.items()) if m.channel_id == cid and not m.deleted]

    def edits_of(self, message_id: int) -> list[float]:
        """Times (fake clock) of the accepted edits of a message, whichever route (PATCH or callback 7)."""
        return list(self._edit_times.get(message_id, []))

    def permissions(self, user: str, channel_id: int) -> int:
        if user == "fluxpaint" and channel_id in self.forbidden_channels:
            return VIEW_CHANNEL
        perms = 0
        for role in ["@everyone", *self.member_roles[user]]:
            perms |= int(self.roles[role]["permissions"])
        return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms

    async def slash(
        self,
        name: str,
        *,
        user: str = "alice",
        channel: str = "general",
        options: dict[str, Any] | None = None,
        attachments: dict[str, tuple[str, bytes, str | None]] | None = None,
    ) -> FakeInteraction:
        """Run ``/name`` (or ``/group sub``) as a member. Option types come from the synced schema, else from the
        Python type; a USER option takes a member's name (``"bob"``) and is resolved like Discord does."""
        command, sub, guild_scoped = self._command_target(name)
        channel_id = self.channel_id(channel)
        opts, resolved = self._typed_options(sub or command, options or {})
        for key, (filename, blob, content_type) in (attachments or {}).items():
            stored = self._new_attachment(Upload(filename, blob, content_type), ephemeral=True)
            self.attachments[stored.id] = stored
            resolved.setdefault("attachments", {})[str(stored.id)] = stored.to_dict()
            opts.append({"name": key, "type": 11, "value": str(stored.id)})
        if command is not None:
            self._check_invocation(command, (sub or command).get("options", []), opts, user, channel_id)
        data = self._command_data(name, command, guild_scoped, opts)
        if resolved:
            data["resolved"] = resolved
        return await self._interact(2, user, channel_id, data)

    async def autocomplete(
        self,
        name: str,
        *,
        focused: str,
        value: str,
        user: str = "alice",
        channel: str = "general",
        options: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        """Type ``value`` into the option ``focused`` of ``/name`` (or ``/group sub``) as a member, with ``options``
        filled in before (typed as in ``slash``): an APPLICATION_COMMAND_AUTOCOMPLETE interaction (type 4). Its
        focused option is sent as typed, a string marked ``"focused": true``, and without resolved data. The bot
        answers with callback type 8: ``await fake.wait_for(lambda: interaction.choices is not None)``.

        Raises: InvocationError where the client sends nothing: the command is not synced, or the option is not
        declared with ``autocomplete: true`` (Discord autocompletes only STRING, INTEGER and NUMBER options)."""
        command, sub, guild_scoped = self._command_target(name)
        if command is None:
            raise InvocationError(f"/{name} is not synced: the client autocompletes only synced options")
        parent = sub or command
        option = next((o for o in parent.get("options", []) if o["name"] == focused), None)
        if option is None:
            raise InvocationError(f"/{name} has no option {focused!r}")
        if not option.get("autocomplete") or option["type"] not in AUTOCOMPLETE_OPTION_TYPES:
            raise InvocationError(f"option {focused!r} of /{name} is not declared with autocomplete")
        if focused in (options or {}):
            raise InvocationError(f"option {focused!r} is the one being typed: pass it as value, not in options")
        if option["type"] == 3 and len(value) > option.get("max_length", 6000):
            raise InvocationError(f"option {focused!r} takes at most {option.get('max_length', 6000)} characters")
        channel_id = self.channel_id(channel)
        opts, _ = self._typed_options(parent, options or {})  # Discord resolves nothing for autocomplete
        self._check_invocation(command, parent.get("options", []), opts, user, channel_id, complete=False)
        typed = {"name": focused, "type": option["type"], "value": value, "focused": True}
        data = self._command_data(name, command, guild_scoped, [*opts, typed])
        return await self._interact(AUTOCOMPLETE, user, channel_id, data, focused=typed)

    async def click(
        self, message_id: int, custom_id: str, *, user: str = "alice", values: list[str] | None = None
    ) -> FakeInteraction:
        """Press a button (or pick ``values`` in a select menu) that the message really shows."""
        msg = self.messages.get(message_id)
        if msg is None or msg.deleted:
            raise InvocationError(f"message {message_id} does not exist")
        found = [c for c in walk_components(msg.components) if c.get("custom_id") == custom_id]
        if not found or found[0].get("disabled"):
            raise InvocationError(f"message {message_id} has no enabled component {custom_id!r}: {msg.custom_ids()}")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": found[0]["type"]}
        if values is not None:
            data["values"] = values
        return await self._interact(3, user, msg.channel_id, data, source=msg)

    async def submit_modal(
        self,
        opened_by: FakeInteraction,
        values: dict[str, str],
        *,
        files: dict[str, list[tuple[str, bytes, str | None]]] | None = None,
    ) -> FakeInteraction:
        """Fill in and submit the modal that ``opened_by`` answered with (callback type 9): text inputs keep their
        prefilled value unless ``values`` names them; ``files`` uploads into file upload components (type 19),
        sent as attachment ids with the attachments in ``resolved``. What the client enforces is checked first
        (required fields, lengths, the number of files)."""
        if opened_by.modal is None:
            raise InvocationError("that interaction did not open a modal")
        resolved: dict[str, Any] = {}

        def fill(comp: dict[str, Any]) -> dict[str, Any]:
            if "components" in comp:
                return {"type": comp["type"], "components": [fill(c) for c in comp["components"]]}
            if "component" in comp:
                return {"type": comp["type"], "id": comp.get("id"), "component": fill(comp["component"])}
            cid = str(comp.get("custom_id"))
            if comp["type"] == 19:
                chosen = (files or {}).get(cid, [])
                low, high = comp.get("min_values") or 0, comp.get("max_values") or 1
                if (comp.get("required", True) and not chosen) or not (low <= len(chosen) <= high):
                    raise InvocationError(f"file upload {cid!r} takes {low} to {high} files, not {len(chosen)}")
                ids = []
                for upload in chosen:
                    stored = self._new_attachment(Upload(*upload), ephemeral=True)
                    self.attachments[stored.id] = stored
                    resolved.setdefault("attachments", {})[str(stored.id)] = stored.to_dict()
                    ids.append(str(stored.id))
                return {"type": 19, "custom_id": cid, "values": ids}
            value = values.get(cid, comp.get("value") or "")
            if comp.get("required", True) and not value:
                raise InvocationError(f"text input {cid!r} is required")
            if len(value) > (comp.get("max_length") or 4000) or len(value) < (comp.get("min_length") or 0):
                raise InvocationError(f"text input {cid!r} takes at most {comp.get('max_length')} characters")
            return {"type": comp["type"], "custom_id": cid, "value": value}

        data: dict[str, Any] = {
            "custom_id": opened_by.modal["custom_id"],
            "components": [fill(c) for c in opened_by.modal["components"]],
        }
        if resolved:
            data["resolved"] = resolved
        source = self.messages.get(opened_by.source_message_id or 0)
        return await self._interact(5, opened_by.user, opened_by.channel_id, data, source=source)

    def post_as(
        self,
        user: str,
        content: str = "",
        *,
        channel: str = "general",
        attachments: list[tuple[str, bytes, str | None]] = (),  # type: ignore[assignment]
    ) -> FakeMessage:
        """A member's own message in a channel (with images, for the message command)."""
        cid = self.channel_id(channel)
        message = FakeMessage(
            id=self._new_id(), channel_id=cid, guild_id=self.guild_id, author=self.users[user], content=content
        )
        for filename, blob, content_type in attachments:
            stored = self._new_attachment(Upload(filename, blob, content_type), ephemeral=False)
            self.attachments[stored.id] = stored
            message.attachments.append(stored)
        self.messages[message.id] = message
        return message

    async def message_command(self, name: str, message_id: int, *, user: str = "alice") -> FakeInteraction:
        """Run the message command ``name`` (a message's Apps menu) on a message, as Discord sends it: data type 3
        with ``target_id`` and the message in ``resolved.messages``."""
        command = next(
            (
                c
                for scope in (self.guild_id, None)
                for c in self.commands.get(scope, [])
                if c["name"] == name and c.get("type") == 3
            ),
            None,
        )
        if command is None:
            raise InvocationError(f"no message command {name!r} is synced")
        msg = self.messages.get(message_id)
        if msg is None or msg.deleted:
            raise InvocationError(f"message {message_id} does not exist")
        self._check_invocation(command, [], [], user, msg.channel_id)
        data: dict[str, Any] = {
            "id": command["id"],
            "name": name,
            "type": 3,
            "target_id": str(message_id),
            "resolved": {"messages": {str(message_id): msg.to_dict()}},
        }
        if command.get("guild_id"):
            data["guild_id"] = str(self.guild_id)
        return await self._interact(2, user, msg.channel_id, data)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway event to every connected bot."""
        delivered = 0
        for session in [s for s in self.sessions if s.ready and not s.ws.closed]:
            try:
                await self._send(session, event, data)
            except ConnectionResetError:  # a killed bot whose socket is not yet seen closed
                session.ready = False
                continue
            delivered += 1
        if not delivered:
            raise RuntimeError("no bot is connected to the fake gateway (await fake.wait_ready() first)")
        await self._notify()

    # members

    def _find_command(self, name: str) -> tuple[dict[str, Any] | None, bool]:
        for scope in (self.guild_id, None):
            for command in self.commands.get(scope, []):
                if command["name"] == name and command.get("type", 1) == 1:
                    return command, scope is not None
        return None, False

    def _command_target(self, name: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None, bool]:
        """The synced command of ``name`` (``"group sub"`` and ``"group subgroup sub"`` too), its subcommand, and
        whether it is guild-scoped."""
        top, *path = name.split(" ")
        command, guild_scoped = self._find_command(top)
        if not path:
            return command, None, guild_scoped
        parent = command or {}
        for depth, part in enumerate(path):
            kind = 1 if depth == len(path) - 1 else 2  # the last is a subcommand, those before it groups
            found = [o for o in parent.get("options", []) if o["type"] == kind and o["name"] == part]
            if not found:
                what = "subcommand" if kind == 1 else "subcommand group"
                raise InvocationError(f"/{' '.join([top, *path[:depth]])} has no {what} {part!r}")
            parent = found[0]
        return command, parent, guild_scoped

    def _typed_options(
        self, parent: dict[str, Any] | None, options: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """``options`` as Discord sends them (types from ``parent``'s schema, else the Python type), and what it
        resolves: a USER option takes a member's name (``"bob"``) and is sent as their id."""
        schema = {o["name"]: o for o in (parent or {}).get("options", [])}
        opts: list[dict[str, Any]] = []
        resolved: dict[str, Any] = {}
        for key, value in options.items():
            kind = schema[key]["type"] if key in schema else OPTION_TYPES.get(type(value))
            if kind is None:
                raise InvocationError(f"option {key!r}: cannot send a {type(value).__name__}")
            if kind == 6:  # USER: the member's name becomes their id, with the user and member resolved
                member = self._member(value)
                resolved.setdefault("users", {})[member["user"]["id"]] = member["user"]
                resolved.setdefault("members", {})[member["user"]["id"]] = {
                    k: v for k, v in member.items() if k != "user"
                }
                value = member["user"]["id"]
            opts.append({"name": key, "type": kind, "value": value})
        return opts, resolved

    def _command_data(
        self, name: str, command: dict[str, Any] | None, guild_scoped: bool, opts: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """An interaction's ``data`` for ``/name`` (a subcommand's options nest under it)."""
        top, *path = name.split(" ")
        data: dict[str, Any] = {"id": (command or {}).get("id", str(self._new_id())), "name": top, "type": 1}
        nested = opts
        for depth, part in reversed(list(enumerate(path))):  # the subcommand innermost, its groups around it
            nested = [{"name": part, "type": 1 if depth == len(path) - 1 else 2, "options": nested}]
        data["options"] = nested
        if guild_scoped:
            data["guild_id"] = str(self.guild_id)
        return data

    def _check_invocation(
        self,
        command: dict[str, Any],
        options: list[dict[str, Any]],
        opts: list[dict[str, Any]],
        user: str,
        cid: int,
        *,
        complete: bool = True,
    ) -> None:
        """What the Discord client enforces before an interaction is ever sent; required options only when the
        command is sent (``complete``), not while the member is still filling it in (autocomplete)."""
        perms = self.permissions(user, cid)
        needed = int(command.get("default_member_permissions") or 0)
        if perms & needed != needed:
            raise InvocationError(f"{user} lacks default_member_permissions={needed} for /{command['name']}")
        if command.get("nsfw") and not self.channels[cid].get("nsfw"):
            raise InvocationError(f"/{command['name']} is age-restricted and this channel is not")
        schema = {o["name"]: o for o in options}
        given = {o["name"]: o["value"] for o in opts}
        for name, option in schema.items():
            if complete and option.get("required") and name not in given:
                raise InvocationError(f"option {name!r} is required")
        for name, value in given.items():
            option = schema.get(name)
            if option is None:
                raise InvocationError(f"/{command['name']} has no option {name!r}")
            kind, wanted = option["type"], OPTION_VALUES.get(option["type"], (object,))
            if not isinstance(value, wanted) or (kind in (4, 10) and isinstance(value, bool)):
                raise InvocationError(f"option {name!r} has type {kind}; {value!r} does not fit")
            choices = [c["value"] for c in option.get("choices") or []]
            if choices and value not in choices:
                raise InvocationError(f"option {name!r} must be one of {choices}")
            low, high = option.get("min_value"), option.get("max_value")
            if (low is not None and value < low) or (high is not None and value > high):
                raise InvocationError(f"option {name!r}={value} is outside [{low}, {high}]")
            min_length, max_length = option.get("min_length", 0), option.get("max_length", 6000)
            if isinstance(value, str) and kind == 3 and not min_length <= len(value) <= max_length:
                raise InvocationError(f"option {name!r} must have {min_length} to {max_length} characters")

    async def _interact(
        self,
        kind: int,
        user: str,
        channel_id: int,
        data: dict[str, Any],
        source: FakeMessage | None = None,
        *,
        focused: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        iid = self._new_id()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        member = self._member(user) | {"permissions": str(self.permissions(user, channel_id))}
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": kind,
            "token": token,
            "version": 1,
            "guild_id": str(self.guild_id),
            "guild": {"id": str(self.guild_id), "locale": "en-US", "features": []},
            "channel_id": str(channel_id),
            "channel": dict(self.channels[channel_id]),
            "member": member,
            "app_permissions": str(self.permissions("fluxpaint", channel_id)),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)},
            "context": 0,
            "attachment_size_limit": self.upload_limit_bytes,
            "data": data,
        }
        if source is not None:
            payload["message"] = source.to_dict()
        interaction = FakeInteraction(
            fake=self,
            id=iid,
            token=token,
            type=kind,
            user=user,
            channel_id=channel_id,
            created_at=self.clock(),
            payload=payload,
            source_message_id=source.id if source else None,
            focused=focused,  # before the dispatch: the bot may answer before dispatch() returns
        )
        self.interactions[iid] = interaction
        self._by_token[token] = interaction
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    def _member(self, user: str) -> dict[str, Any]:
        return {
            "user": self.users[user],
            "roles": [self.roles[r]["id"] for r in self.member_roles[user]],
            "joined_at": "2023-01-02T00:00:00+00:00",
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }

    # gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = GatewaySession(ws)
        self.sessions.append(session)
        # plain text frames: discord.py inflates only binary ones, whatever compress= it asked for
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            if message["op"] == 1:
                session.heartbeats += 1
                await ws.send_str(json.dumps({"op": 11}))
            elif message["op"] == 2:
                await self._identify(session, message["d"])
            elif message["op"] == 6:
                await self._resume(session, message["d"])
            elif message["op"] == 8:  # only with the members intent: chunk_guilds_at_startup waits for this
                chunk = {"guild_id": str(self.guild_id), "chunk_index": 0, "chunk_count": 1}
                chunk |= {"members": [self._member(n) for n in self.member_roles], "nonce": message["d"].get("nonce")}
                await self._send(session, "GUILD_MEMBERS_CHUNK", chunk)
            # op 3 (presence update): nothing to answer
        await self._notify()
        return ws

    async def _identify(self, session: GatewaySession, data: dict[str, Any]) -> None:
        if data.get("token") != self.bot_token:
            await session.ws.close(code=4004, message=b"Authentication failed.")
            return
        ready = {
            "v": 10,
            "user": self.bot_user | {"verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "session_id": session.session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        await self._send(session, "READY", ready)
        await self._send(session, "GUILD_CREATE", self._guild_payload())
        session.ready = True
        await self._notify()

    async def _resume(self, session: GatewaySession, data: dict[str, Any]) -> None:
        previous = next((s for s in self.sessions if s.session_id == data.get("session_id") and s is not session), None)
        if previous is None or data.get("token") != self.bot_token:
            await session.ws.send_str(json.dumps({"op": 9, "d": False}))
            return
        session.session_id, session.seq, session.ready = previous.session_id, previous.seq, True
        self.sessions.remove(previous)
        await self._send(session, "RESUMED", {})
        await self._notify()

    async def _send(self, session: GatewaySession, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        await session.ws.send_str(json.dumps({"op": 0, "t": event, "s": session.seq, "d": data}))

    async def _close_sockets(self, _app: web.Application) -> None:
        for session in self.sessions:
            await session.ws.close(code=WSCloseCode.GOING_AWAY)

    def _guild_payload(self) -> dict[str, Any]:
        guild_channels = [c for c in self.channels.values() if c["type"] != 1]
        return {
            "id": str(self.guild_id),
            "name": "fluxpaint test server",
            "icon": None,
            "owner_id": self.users["admin"]["id"],
            "unavailable": False,
            "large": False,
            "member_count": len(self.member_roles),
            "features": [],
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "mfa_level": 0,
            "verification_level": 0,
            "explicit_content_filter": 0,
            "default_message_notifications": 0,
            "system_channel_flags": 0,
            "joined_at": "2023-01-02T00:00:00+00:00",
            "roles": list(self.roles.values()),
            "channels": guild_channels,
            "members": [self._member(name) for name in self.member_roles],
            **{key: [] for key in ("threads", "emojis", "stickers", "voice_states", "presences", "stage_instances")},
        }

    # REST: session, commands

    def _require_bot(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bot {self.bot_token}":
            raise ApiError(401, "401: Unauthorized", 0)

    async def _get_me(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        return json_response(self.bot_user | {"verified": True, "mfa_enabled": False, "flags": 0})

    async def _get_application(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        owner = self.users["admin"]
        app: dict[str, Any] = {"id": str(self.application_id), "name": "fluxpaint", "description": "", "icon": None}
        app |= {"bot_public": True, "bot_require_code_grant": False, "owner": owner, "verify_key": "0" * 64}
        return json_response(app | {"flags": 0, "team": None, "summary": "", "bot": self.bot_user})

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        limit = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return json_response({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    def _command_scope(self, request: web.Request) -> int | None:
        self._require_bot(request)
        if request.match_info["app"] != str(self.application_id):
            raise ApiError(403, "Missing Access", 50001)
        gid = request.match_info.get("gid")
        if gid is not None and gid != str(self.guild_id):
            raise ApiError(403, "Missing Access", 50001)
        return None if gid is None else self.guild_id

    async def _get_commands(self, request: web.Request) -> web.Response:
        return json_response(self.commands.get(self._command_scope(request), []))

    async def _put_commands(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        body, _ = await self._read_body(request)
        body = body or []  # null clears them, as the spec allows
        if problems := command_problems(body):
            raise refusal(problems)
        old = {c["name"]: c for c in self.commands.get(scope, [])}
        stored = []
        for command in body:
            entry = {**command, "type": command.get("type") or 1, "application_id": str(self.application_id)}
            entry.setdefault("description", "")  # user and message commands have none; Discord answers ""
            entry["id"] = old.get(command["name"], {}).get("id", str(self._new_id()))
            entry["version"] = str(self._new_id())
            perms = command.get("default_member_permissions")
            entry["default_member_permissions"] = None if perms is None else str(perms)
            if scope is not None:
                entry["guild_id"] = str(scope)
            stored.append(entry)
        self.commands[scope] = stored
        self.command_syncs.append((scope, stored))
        return json_response(stored)

    # REST: interactions and their webhooks

    async def _callback(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(_snowflake_arg(request, "iid"))
        if interaction is None:
            raise ApiError(404, "Unknown interaction", 10062)
        if interaction.token != request.match_info["token"]:
            raise ApiError(401, "Invalid Webhook Token", 50027)
        payload, uploads = await self._read_body(request, check=False)
        sent = payload if isinstance(payload, dict) else {}
        callback = Callback(type=sent.get("type", 0), time=self.clock(), data=sent.get("data") or {})
        interaction.callbacks.append(callback)
        try:
            if interaction.focused is not None and callback.type == AUTOCOMPLETE_RESULT:
                # the spec's union of result data, held to the branch of the option being typed
                problems = autocomplete_result_problems(payload, interaction.focused["type"]) if self.validate else []
                if problems:
                    raise refusal(problems)
            else:
                self._check_body(request, payload)
            if interaction.acknowledged:
                raise ApiError(400, "Interaction has already been acknowledged.", 40060)
            if callback.time - interaction.created_at > self.first_response_deadline_s:
                raise ApiError(404, "Unknown interaction", 10062)
            body = self._respond(interaction, callback, uploads)
        except ApiError as err:
            callback.status = err.status
            raise
        callback.status = 200
        if request.query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        return json_response(body)

    def _respond(self, interaction: FakeInteraction, callback: Callback, uploads: dict[int, Upload]) -> dict[str, Any]:
        kind, data = callback.type, callback.data
        source = self.messages.get(interaction.source_message_id or 0)
        message: FakeMessage | None = None
        # an autocomplete is answered with choices only (it cannot be deferred), and choices answer nothing else
        autocomplete = interaction.type == AUTOCOMPLETE
        if autocomplete and kind == AUTOCOMPLETE_RESULT:
            interaction.choices = [c for c in data.get("choices") or [] if c is not None]
        elif kind == 4 and not autocomplete:
            message = self._create_message(interaction.channel_id, data, uploads, interaction=interaction)
            interaction.original_message_id = message.id
        elif kind == 5 and not autocomplete:
            flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            message = self._new_message(interaction.channel_id, interaction=interaction, flags=flags)
            interaction.original_message_id = message.id
        elif kind in (6, 7) and source is not None:
            interaction.original_message_id = source.id
            if kind == 7:
                self._apply_edit(source, data, uploads, default_parse=WEBHOOK_MENTIONS)
                message = source
        elif kind == 9 and interaction.type not in (5, AUTOCOMPLETE):
            if not data.get("custom_id") or not data.get("title") or not data.get("components"):
                raise invalid_form("data", "A modal needs custom_id, title and components.")
            interaction.modal = data
        else:
            raise invalid_form("type", f"Callback type {kind} is not valid for interaction type {interaction.type}.")
        summary: dict[str, Any] = {"id": str(interaction.id), "type": interaction.type}
        if message is None:
            return {"interaction": summary}
        summary |= {"response_message_id": str(message.id), "response_message_loading": message.loading}
        summary["response_message_ephemeral"] = message.ephemeral
        return {"interaction": summary, "resource": {"type": kind, "message": message.to_dict()}}

    def _webhook_interaction(self, request: web.Request) -> FakeInteraction:
        if request.match_info["app"] != str(self.application_id):
            raise ApiError(404, "Unknown Webhook", 10015)
        interaction = self._by_token.get(request.match_info["token"])
        if interaction is None:
            raise ApiError(401, "Invalid Webhook Token", 50027)
        if interaction.type == AUTOCOMPLETE:  # choices are its only answer: no message, no followups
            raise ApiError(404, "Unknown Webhook", 10015)
        age = self.clock() - interaction.created_at
        # Discord drops the token after 15 minutes, or at once when the 3 s deadline passed unanswered
        if age > self.token_ttl_s or (not interaction.acknowledged and age > self.first_response_deadline_s):
            raise ApiError(401, "Invalid Webhook Token", 50027)
        return interaction

    def _webhook_message(self, request: web.Request) -> tuple[FakeInteraction, FakeMessage]:
        interaction = self._webhook_interaction(request)
        if request.match_info["mid"] == "@original":
            mid = interaction.original_message_id
        else:
            mid = _snowflake_arg(request, "mid")
            if mid not in (interaction.original_message_id, *interaction.followup_ids):
                mid = None
        message = self.messages.get(mid or 0)
        if message is None or message.deleted:
            raise ApiError(404, "Unknown Message", 10008)
        return interaction, message

    async def _webhook_get(self, request: web.Request) -> web.Response:
        return json_response(self._webhook_message(request)[1].to_dict())

    async def _webhook_edit(self, request: web.Request) -> web.Response:
        _, message = self._webhook_message(request)
        payload, uploads = await self._read_body(request)
        headers = self._count_edit(message.id, f"webhook:{request.match_info['token']}")
        self._apply_edit(message, payload, uploads, default_parse=WEBHOOK_MENTIONS)
        return json_response(message.to_dict(), headers=headers)

    async def _webhook_delete(self, request: web.Request) -> web.Response:
        self._webhook_message(request)[1].deleted = True
        return web.Response(status=204)

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        if not interaction.acknowledged:
            raise ApiError(404, "Unknown Webhook", 10015)
        payload, uploads = await self._read_body(request)
        original = interaction.original()
        if original is not None and original.loading:
            # the first followup after a deferred reply fills the loading message; its ephemeral flag is ignored
            self._apply_edit(original, payload, uploads, default_parse=WEBHOOK_MENTIONS)
            message = original
        else:
            message = self._create_message(interaction.channel_id, payload, uploads, interaction=interaction)
            interaction.followup_ids.append(message.id)
        if request.query.get("wait") not in ("1", "true", "True"):
            return web.Response(status=204)
        return json_response(message.to_dict())

    # REST: channels and DMs (bot token)

    def _bot_channel(self, request: web.Request) -> int:
        self._require_bot(request)
        cid = _snowflake_arg(request, "cid")
        if cid not in self.channels:
            raise ApiError(404, "Unknown Channel", 10003)
        if cid in self.forbidden_channels:
            raise ApiError(403, "Missing Permissions", 50013)
        return cid

    def _bot_message(self, request: web.Request) -> FakeMessage:
        cid = self._bot_channel(request)
        message = self.messages.get(_snowflake_arg(request, "mid"))
        # ephemeral messages exist only for the interaction token (api-docs#6007)
        if message is None or message.deleted or message.channel_id != cid or message.ephemeral:
            raise ApiError(404, "Unknown Message", 10008)
        return message

    async def _get_channel(self, request: web.Request) -> web.Response:
        return json_response(self.channels[self._bot_channel(request)])

    async def _channel_send(self, request: web.Request) -> web.Response:
        cid = self._bot_channel(request)
        payload, uploads = await self._read_body(request)
        nonce = payload.get("nonce")
        if payload.get("enforce_nonce") and nonce is not None and (cid, str(nonce)) in self._nonces:
            return json_response(self.messages[self._nonces[cid, str(nonce)]].to_dict())
        reference = payload.get("message_reference")
        if isinstance(reference, dict):
            target = self.messages.get(int(reference["message_id"]))
            exists = target is not None and not target.deleted and target.channel_id == cid
            if not exists and reference.get("fail_if_not_exists", True):
                raise invalid_form("message_reference", "Unknown message", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE")
        message = self._create_message(cid, payload, uploads, interaction=None)
        if isinstance(reference, dict) and exists:
            message.type = 19  # REPLY
            message.message_reference = {
                "type": 0,
                "message_id": str(reference["message_id"]),
                "channel_id": str(cid),
                "guild_id": str(self.guild_id),
            }
        if nonce is not None:
            message.nonce = nonce
            self._nonces[cid, str(nonce)] = message.id
        return json_response(message.to_dict())

    async def _channel_history(self, request: web.Request) -> web.Response:
        """Up to ``limit`` (default 50) messages, newest first: the latest, or those just ``before``, just ``after``
        or ``around`` (that one included) a message id. Ephemeral messages are never in a channel's history."""
        cid = self._bot_channel(request)
        if not self.permissions("fluxpaint", cid) & READ_MESSAGE_HISTORY:
            return json_response([])  # Discord answers an empty list without the permission
        query = request.query
        anchors = [key for key in ("around", "before", "after") if key in query]
        if len(anchors) > 1:
            raise invalid_form(anchors[1], "Only one of around, before and after may be given.")
        limit = int(query.get("limit", 50))
        shown = [m for m in self.messages_in(cid) if not m.ephemeral]  # oldest first
        if not anchors:
            page = shown[-limit:]
        elif anchors[0] == "before":
            page = [m for m in shown if m.id < int(query["before"])][-limit:]
        elif anchors[0] == "after":
            page = [m for m in shown if m.id > int(query["after"])][:limit]
        else:
            pivot, older_count = int(query["around"]), limit // 2
            older = [m for m in shown if m.id < pivot][-older_count:] if older_count else []
            page = older + [m for m in shown if m.id >= pivot][: limit - older_count]
        # history never shows a message's nonce; only the answer to the create did
        return json_response([{k: v for k, v in m.to_dict().items() if k != "nonce"} for m in reversed(page)])

    async def _channel_get(self, request: web.Request) -> web.Response:
        return json_response(self._bot_message(request).to_dict())

    async def _channel_edit(self, request: web.Request) -> web.Response:
        message = self._bot_message(request)
        if message.author["id"] != self.bot_user["id"]:
            raise ApiError(403, "Cannot edit a message authored by another user", 50005)
        payload, uploads = await self._read_body(request)
        headers = self._count_edit(message.id, f"channel:{message.channel_id}")
        self._apply_edit(message, payload, uploads, default_parse=CHANNEL_MENTIONS)
        return json_response(message.to_dict(), headers=headers)

    async def _channel_delete(self, request: web.Request) -> web.Response:
        message = self._bot_message(request)
        if message.author["id"] != self.bot_user["id"]:
            raise ApiError(403, "Missing Permissions", 50013)
        message.deleted = True
        return web.Response(status=204)

    async def _create_dm(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        body, _ = await self._read_body(request)
        user = next((u for u in self.users.values() if u["id"] == str(body.get("recipient_id"))), None)
        if user is None or user["bot"]:
            raise ApiError(400, "Invalid Recipient(s)", 50033)
        existing = next((c for c in self.channels.values() if c.get("recipients") == [user]), None)
        if existing is None:
            cid = self._new_id()
            existing = {"id": str(cid), "type": 1, "recipients": [user], "last_message_id": None, "flags": 0}
            self.channels[cid] = existing
        return json_response(existing)

    async def _get_user(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        uid = str(_snowflake_arg(request, "uid"))
        user = next((u for u in self.users.values() if u["id"] == uid), None)
        if user is None:
            raise ApiError(404, "Unknown User", 10013)
        return json_response(user)

    async def _cdn(self, request: web.Request) -> web.Response:
        stored = self.attachments.get(int(request.match_info["aid"]) if request.match_info["aid"].isdigit() else 0)
        query = request.query
        if stored is None or stored.filename != request.match_info["filename"] or not {"ex", "is", "hm"} <= set(query):
            return web.Response(status=404, text="This content is no longer available.")
        expected = self._sign(stored.id, stored.filename, query["ex"], query["is"])
        if not hmac.compare_digest(expected, query["hm"]) or int(query["ex"], 16) < time.time():
            return web.Response(status=404, text="This content is no longer available.")
        if self.cdn_hold is not None:
            self.cdn_waiting += 1
            await self._notify()
            await self.cdn_hold.wait()
        return web.Response(body=stored.data, content_type=stored.content_type or "application/octet-stream")

    async def _unknown(self, request: web.Request) -> web.Response:
        self.unknown_routes.append(f"{request.method} {request.path}")
        raise ApiError(404, "404: Not Found", 0)

    # messages: Discord's rules

    async def _read_body(self, request: web.Request, *, check: bool = True) -> tuple[Any, dict[int, Upload]]:
        """JSON body or multipart (``payload_json`` + ``files[n]``); records the JSON part on the request and, with
        ``check``, refuses it as Discord does when it breaks the route's schema.

        Raises: ApiError 400/50035 for a body the spec refuses."""
        payload: Any = {}
        uploads: dict[int, Upload] = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "payload_json":
                    payload = _parse_json(await part.text())
                elif part.name and (match := re.fullmatch(r"files\[(\d+)\]", part.name)):
                    sent_type = part.headers.get("Content-Type")
                    filename = part.filename or f"file{match[1]}"
                    content_type = sent_type if sent_type and sent_type != "application/octet-stream" else None
                    uploads[int(match[1])] = Upload(filename, bytes(await part.read()), content_type)
        elif request.can_read_body:
            payload = _parse_json(await request.read())
        request[BODY_JSON] = payload
        request[BODY_FILES] = [u.filename for _, u in sorted(uploads.items())]
        if check:
            self._check_body(request, payload)
        return payload, uploads

    def _new_message(self, channel_id: int, *, interaction: FakeInteraction | None, flags: int = 0) -> FakeMessage:
        channel = self.channels[channel_id]
        message = FakeMessage(
            id=self._new_id(),
            channel_id=channel_id,
            guild_id=int(channel["guild_id"]) if "guild_id" in channel else None,
            author=self.bot_user,
            flags=flags,
        )
        if interaction is not None:
            first = interaction.original_message_id is None and interaction.type == 2
            message.type = 20 if first else 0  # CHAT_INPUT_COMMAND for a slash command's reply
            message.webhook_id = self.application_id
            message.interaction_metadata = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": self.users[interaction.user],
                "authorizing_integration_owners": {"0": str(self.guild_id)},
            }
        self.messages[message.id] = message
        return message

    def _create_message(
        self,
        channel_id: int,
        payload: dict[str, Any],
        uploads: dict[int, Upload],
        *,
        interaction: FakeInteraction | None,
    ) -> FakeMessage:
        fields = self._resolve(None, payload, uploads, may_be_ephemeral=interaction is not None)
        message = self._new_message(channel_id, interaction=interaction)
        self._commit(message, fields, payload)
        default_parse = CHANNEL_MENTIONS if interaction is None else WEBHOOK_MENTIONS
        self._set_mentions(message, payload.get("allowed_mentions"), default_parse)
        return message

    def _apply_edit(
        self,
        message: FakeMessage,
        payload: dict[str, Any],
        uploads: dict[int, Upload],
        *,
        default_parse: tuple[str, ...],
    ) -> None:
        fields = self._resolve(message, payload, uploads, may_be_ephemeral=False)
        self._commit(message, fields, payload)
        if "content" in payload:
            self._set_mentions(message, payload.get("allowed_mentions"), default_parse)
        message.edited_at = datetime.now(UTC)
        self._edit_times.setdefault(message.id, []).append(self.clock())

    def _commit(self, message: FakeMessage, fields: dict[str, Any], payload: dict[str, Any]) -> None:
        for key, value in fields.items():
            setattr(message, key, value)
        for stored in message.attachments:
            self.attachments.setdefault(stored.id, stored)
        if "allowed_mentions" in payload:
            message.allowed_mentions = payload["allowed_mentions"]

    def _resolve(
        self,
        current: FakeMessage | None,
        payload: dict[str, Any],
        uploads: dict[int, Upload],
        *,
        may_be_ephemeral: bool,
    ) -> dict[str, Any]:
        """The message's fields after this create or edit, validated as Discord does; nothing is changed yet."""
        for upload in uploads.values():
            if len(upload.data) > self.upload_limit_bytes:
                raise ApiError(413, "Request entity too large", 40005)
        if sum(len(u.data) for u in uploads.values()) > self.max_request_bytes:
            raise ApiError(413, "Request entity too large", 40005)

        def pick(key: str, default: Any) -> Any:
            value = payload[key] if key in payload else getattr(current, key, default)
            return default if value is None else value

        content = str(pick("content", ""))
        embeds: list[dict[str, Any]] = pick("embeds", [])
        components: list[dict[str, Any]] = pick("components", [])
        attachments = self._resolve_attachments(current.attachments if current else [], payload, uploads)
        sent_flags = int(payload.get("flags") or 0)
        if current is None:
            flags = sent_flags if may_be_ephemeral else sent_flags & ~EPHEMERAL
        else:  # ephemerality is fixed at creation; an edit ends the loading state
            kept = current.flags & EPHEMERAL
            flags = kept | (sent_flags & ~(EPHEMERAL | LOADING)) if "flags" in payload else current.flags & ~LOADING

        if len(content) > 2000:
            raise invalid_form("content", "Must be 2000 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
        if flags & IS_COMPONENTS_V2 and (content or embeds):
            raise invalid_form("content", "Cannot send content or embeds with IS_COMPONENTS_V2.")
        if len(embeds) > 10:
            raise invalid_form("embeds", "Must be 10 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
        for index, embed in enumerate(embeds):
            for key, limit in (("title", 256), ("description", 4096)):
                if len(embed.get(key) or "") > limit:
                    raise invalid_form(f"embeds.{index}.{key}", f"Must be {limit} or fewer in length.")
            if len(embed.get("fields", [])) > 25:
                raise invalid_form(f"embeds.{index}.fields", "Must be 25 or fewer in length.")
        if sum(embed_chars(e) for e in embeds) > 6000:
            raise invalid_form("embeds", "Embed size exceeds maximum size of 6000", "MAX_EMBED_SIZE_EXCEEDED")
        if len(attachments) > 10:
            raise invalid_form("attachments", "Must be 10 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
        has_extra = payload.get("sticker_ids") or payload.get("poll")
        if not content.strip() and not embeds and not attachments and not components and not has_extra:
            raise ApiError(400, "Cannot send an empty message", 50006)
        return {"content": content, "embeds": embeds, "components": components, "attachments": attachments} | {
            "flags": flags
        }

    def _resolve_attachments(
        self, existing: list[StoredAttachment], payload: dict[str, Any], uploads: dict[int, Upload]
    ) -> list[StoredAttachment]:
        """With ``attachments`` the message keeps exactly those listed (old ones by id, new ones by index)."""
        listed = payload.get("attachments")
        if listed is None:
            return [*existing, *(self._new_attachment(u) for _, u in sorted(uploads.items()))]
        kept = {a.id: a for a in existing}
        result = []
        for index, ref in enumerate(listed):
            ref_id = int(ref.get("id", -1))
            if ref_id in uploads:
                upload = uploads[ref_id]
                renamed = Upload(ref.get("filename") or upload.filename, upload.data, upload.content_type)
                result.append(self._new_attachment(renamed, description=ref.get("description")))
            elif ref_id in kept:
                result.append(kept[ref_id])
            else:
                raise invalid_form(f"attachments.{index}.id", f"Unknown attachment {ref_id}.")
        return result

    def _new_attachment(
        self, upload: Upload, *, ephemeral: bool = False, description: str | None = None
    ) -> StoredAttachment:
        attachment_id = self._new_id()
        filename = re.sub(r"[^A-Za-z0-9._-]", "_", upload.filename) or "unknown"
        content_type = upload.content_type or mimetypes.guess_type(filename)[0]
        issued = int(time.time())
        ex, is_ = f"{issued + 86_400:x}", f"{issued:x}"
        signature = self._sign(attachment_id, filename, ex, is_)
        url = f"{self._base()}/cdn/attachments/{attachment_id}/{filename}?ex={ex}&is={is_}&hm={signature}&"
        return StoredAttachment(
            attachment_id, filename, upload.data, content_type, url, description=description, ephemeral=ephemeral
        )

    def _sign(self, attachment_id: int, filename: str, ex: str, is_: str) -> str:
        return hmac.new(self._cdn_key, f"{attachment_id}/{filename}{ex}{is_}".encode(), hashlib.sha256).hexdigest()

    def _set_mentions(
        self, message: FakeMessage, allowed: dict[str, Any] | None, default_parse: tuple[str, ...]
    ) -> None:
        """``mentions`` lists the users this message pings, after ``allowed_mentions`` (or the route's default)."""
        parse = default_parse if allowed is None else tuple(allowed.get("parse", []))
        allowed_users = set() if allowed is None else {str(u) for u in allowed.get("users", [])}
        allowed_roles = set() if allowed is None else {str(r) for r in allowed.get("roles", [])}
        by_id = {u["id"]: u for u in self.users.values()}
        users = dict.fromkeys(re.findall(r"<@!?(\d+)>", message.content))
        message.mentions = [by_id[u] for u in users if u in by_id and ("users" in parse or u in allowed_users)]
        roles = dict.fromkeys(re.findall(r"<@&(\d+)>", message.content))
        message.mention_roles = [r for r in roles if "roles" in parse or r in allowed_roles]
        message.mention_everyone = "everyone" in parse and bool(re.search(r"@(everyone|here)\b", message.content))

    def _count_edit(self, message_id: int, bucket: str) -> dict[str, str]:
        """Enforce ``edit_rate`` for this message; returns the rate-limit headers for a successful edit."""
        limit, window_s = self.edit_rate
        now = time.monotonic()  # real time: discord.py really sleeps retry_after before it retries
        window = self._edit_windows.setdefault(message_id, deque())
        while window and now - window[0] >= window_s:
            window.popleft()
        bucket_hash = hashlib.sha1(bucket.split(":")[0].encode()).hexdigest()[:32]
        if len(window) >= limit:
            retry_after = max(0.001, round(window[0] + window_s - now, 3))
            headers = self._ratelimit_headers(limit, 0, retry_after, bucket_hash)
            headers |= {"Retry-After": str(math.ceil(retry_after)), "Via": "1.1 google", "X-RateLimit-Scope": "user"}
            message = "You are being rate limited."
            body = {"message": message, "retry_after": retry_after, "global": False}
            raise ApiError(429, message, body=body, headers=headers)
        window.append(now)
        if not self.ratelimit_headers:
            return {}
        return self._ratelimit_headers(limit, limit - len(window), window[0] + window_s - now, bucket_hash)

    def _count_global(self) -> None:
        """Enforce ``global_rate`` on a request the global limit counts.

        Raises: ApiError 429 with ``global: true`` once the window is full."""
        if self.global_rate is None:
            return
        limit, window_s = self.global_rate
        window = self._global_window
        if window is None or (window.limit, window.window_s) != (limit, window_s):  # the knob was changed
            window = self._global_window = SlidingWindow(limit, window_s)
        retry_after = window.admit(time.monotonic())  # real time, as in _count_edit
        if retry_after is None:
            return
        message = "You are being rate limited."
        headers = {"Retry-After": str(math.ceil(retry_after)), "X-RateLimit-Global": "true"}
        headers |= {"X-RateLimit-Scope": "global", "Via": "1.1 google"}  # without Via discord.py sees a Cloudflare ban
        body = {"message": message, "retry_after": retry_after, "global": True}
        raise ApiError(429, message, body=body, headers=headers)

    @staticmethod
    def _ratelimit_headers(limit: int, remaining: int, reset_after: float, bucket_hash: str) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": bucket_hash,
        }

    def _new_id(self) -> int:
        return snowflake(time.time() * 1000, next(self._ids))


def embed_chars(embed: dict[str, Any]) -> int:
    """Characters that count toward Discord's 6000-per-message embed limit."""
    parts = [embed.get("title"), embed.get("description")]
    parts += [embed.get("footer", {}).get("text"), embed.get("author", {}).get("name")]
    for item in embed.get("fields", []):
        parts += [item.get("name"), item.get("value")]
    return sum(len(p or "") for p in parts)


def _parse_json(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "The request body contains invalid JSON.", 50109) from None


def _snowflake_arg(request: web.Request, key: str) -> int:
    value = request.match_info[key]
    if not value.isdigit():
        raise invalid_form(key, f'Value "{value}" is not snowflake.', "NUMBER_TYPE_COERCE")
    return int(value)


async def start_fake_discord(aiohttp_server: Callable[..., Awaitable[Any]], **knobs: Any) -> FakeDiscord:
    """Serve a FakeDiscord on 127.0.0.1 with pytest-aiohttp's ``aiohttp_server`` and set its ``base_url``."""
    fake = FakeDiscord(**knobs)
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("")).rstrip("/")
    return fake
