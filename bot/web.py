"""The mask painter's web server (SPEC 12): the page, its image and the mask upload; it serves nothing else."""

from __future__ import annotations

import hashlib
import html
import importlib.resources
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from bot.config import WebSettings
from bot.errors import UserFacingError, user_message
from bot.paint_links import (
    ForgedLinkError,
    PaintGrant,
    PaintLinkError,
    PaintLinks,
    UsedLinkError,
)
from bot.serving import start_site

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})  # never SVG: it can hold script
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token is in the address: no other site may see it
    "X-Frame-Options": "DENY",  # no other page may frame the painter and trick a member into submitting
}
STATIC_PATH = "/paint/static/"
ASSETS = {"paint.js": "text/javascript", "paint.css": "text/css"}
TOKEN_PREFIX_CHARS = 8
_READ_CHUNK_BYTES = 64 * 1024
_TOKEN_IN_PATH = re.compile(rf"^/paint/(?!static/)([^/]{{0,{TOKEN_PREFIX_CHARS}}})[^/]*")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PaintJobs(Protocol):
    """The jobs side of the painter: what the page paints on, and where the mask goes."""

    async def image(self, grant: PaintGrant) -> tuple[bytes, str] | None:
        """The image to paint on and its content type (PNG, JPEG, WebP or GIF), or None when the job no longer
        waits for a mask (used, cancelled, expired or pruned)."""
        ...

    async def submit_mask(self, grant: PaintGrant, png: bytes) -> str:
        """Hands the mask to the job and returns the text the page shows ("Mask received: …").

        Raises:
            UsedLinkError: the job no longer waits for a mask (a second submit, cancelled, expired, pruned).
            UserFacingError: the mask cannot be used (its message is shown); nothing was changed.
        """
        ...


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _asset(name: str, content_type: str) -> _Asset:
    body = (importlib.resources.files("bot") / "static" / name).read_bytes()
    return _Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def token_prefix(token: str) -> str:
    """What logs may show of a token: enough to tell two apart, far too little to use."""
    return token[:TOKEN_PREFIX_CHARS] + "…"


def redact_path(path: str) -> str:
    """A request path fit for the log: a painter token is cut to its prefix."""
    return _TOKEN_IN_PATH.sub(lambda match: "/paint/" + match[1] + "…", path, count=1)


class _RedactedAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.0f ms", request.method, redact_path(request.path), response.status, time * 1000)


class _Refused(Exception):
    """A request refused with ``status`` and a message for the member; nothing was changed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _link_status(exc: PaintLinkError) -> int:
    return 403 if isinstance(exc, ForgedLinkError) else 410


class PaintServer:
    """The painter's aiohttp app; ``async with`` serves it on ``web.listen``."""

    def __init__(self, settings: WebSettings, links: PaintLinks, jobs: PaintJobs) -> None:
        self.settings = settings
        self.links = links
        self.jobs = jobs
        # grants whose mask was taken: a replay in this process is refused before it reaches the jobs side
        self._used: set[PaintGrant] = set()
        self._pending: set[PaintGrant] = set()
        self._page = _asset("paint.html", "text/html")
        self._runner: web.AppRunner | None = None
        self.app = self._make_app()

    def __repr__(self) -> str:
        return f"PaintServer(listen={self.settings.listen!r}, public_url={self.settings.public_url!r})"

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=self.settings.max_mask_bytes + 1)
        app.on_response_prepare.append(_security_headers)
        for name, content_type in ASSETS.items():
            app.router.add_get(STATIC_PATH + name, _asset_handler(_asset(name, content_type)))
        app.router.add_get("/health", _health)
        app.router.add_get("/paint/{token}", self._show_page, name="page")
        app.router.add_post("/paint/{token}", self._take_mask)
        app.router.add_get("/paint/{token}/image", self._show_image)
        return app

    async def __aenter__(self) -> Self:
        self._runner = await start_site(
            self.app, self.settings.listen, access_log_class=_RedactedAccessLogger, handle_signals=False
        )
        log.info("painter listening on %s for %s", self.settings.listen, self.settings.public_url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The one place a painter request fails: refusals become their page, a bug a logged 500."""
        as_html = request.method in ("GET", "HEAD") and request.match_info.route.name == "page"
        try:
            return await handler(request)
        except _Refused as refused:
            return _refusal(refused.status, refused.message, as_html=as_html)
        except web.HTTPException:
            raise
        except Exception as exc:  # the 500 says nothing of the cause; the log has it
            log.exception("painter request %s %s failed", request.method, redact_path(request.path))
            return _refusal(500, user_message(exc), as_html=as_html)

    def _grant(self, request: web.Request) -> PaintGrant:
        token = request.match_info["token"]
        try:
            grant = self.links.verify(token)
        except PaintLinkError as exc:
            log.info("painter link refused (%s) token=%s", type(exc).__name__, token_prefix(token))
            raise _Refused(_link_status(exc), exc.message) from exc
        if grant in self._used:
            log.info("painter link replayed job=%s user=%s token=%s", grant.job_id, grant.user_id, token_prefix(token))
            raise _Refused(410, UsedLinkError().message)
        return grant

    async def _show_page(self, request: web.Request) -> web.Response:
        self._grant(request)
        return web.Response(body=self._page.body, content_type=self._page.content_type, charset="utf-8")

    async def _show_image(self, request: web.Request) -> web.Response:
        grant = self._grant(request)
        found = await self.jobs.image(grant)
        if found is None:
            raise _Refused(410, UsedLinkError().message)
        body, content_type = found
        if content_type not in IMAGE_TYPES:
            raise ValueError(f"PaintJobs.image gave a {content_type!r}, not one of {sorted(IMAGE_TYPES)}")
        return web.Response(body=body, content_type=content_type)

    async def _take_mask(self, request: web.Request) -> web.Response:
        grant = self._grant(request)
        if grant in self._pending:
            raise _Refused(409, "This mask is being submitted already: wait for the answer.")
        self._pending.add(grant)
        try:
            png = await self._read_mask(request)
            try:
                message = await self.jobs.submit_mask(grant, png)
            except PaintLinkError as exc:
                if not isinstance(exc, ForgedLinkError):
                    self._remember(grant)
                raise _Refused(_link_status(exc), exc.message) from exc
            except UserFacingError as exc:
                log.info("painted mask refused job=%s user=%s: %s", grant.job_id, grant.user_id, exc.message)
                raise _Refused(422, exc.message) from exc
        finally:
            self._pending.discard(grant)
        self._remember(grant)
        log.info("painted mask received job=%s user=%s bytes=%d", grant.job_id, grant.user_id, len(png))
        return web.json_response({"message": message})

    async def _read_mask(self, request: web.Request) -> bytes:
        """The POST body, read no further than ``web.max_mask_bytes``."""
        if request.content_type != "image/png":
            raise _Refused(415, "The mask must be sent as a PNG image (Content-Type image/png).")
        cap = self.settings.max_mask_bytes
        too_large = f"The mask is larger than {cap // 1024} KiB; the painter cannot send it."
        if request.content_length is not None and request.content_length > cap:
            raise _Refused(413, too_large)
        body = bytearray()
        while chunk := await request.content.read(_READ_CHUNK_BYTES):
            body += chunk
            if len(body) > cap:
                raise _Refused(413, too_large)
        if not body.startswith(PNG_SIGNATURE):
            raise _Refused(422, "The mask is not a PNG image.")
        return bytes(body)

    def _remember(self, grant: PaintGrant) -> None:
        now = self.links.now()
        self._used = {used for used in self._used if used.expires_at > now}  # an expired one is refused anyway
        self._used.add(grant)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def _asset_handler(asset: _Asset) -> Handler:
    async def serve(request: web.Request) -> web.Response:
        headers = {"Cache-Control": "no-cache", "ETag": asset.etag}  # revalidated, so an upgrade shows at once
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers)

    return serve


def _refusal(status: int, message: str, *, as_html: bool) -> web.Response:
    if not as_html:
        return web.json_response({"error": message}, status=status)
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>Mask painter</title><link rel="stylesheet" href="static/paint.css"></head>'
        '<body class="refused"><main><h1>Mask painter</h1>'
        f'<p id="status">{html.escape(message)}</p></main></body></html>'
    )
    return web.Response(status=status, text=page, content_type="text/html")
