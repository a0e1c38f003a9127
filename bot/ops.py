"""The ops endpoints (SPEC 13): ``GET /healthz`` and ``GET /metrics`` on ``ops.listen``; nothing else is served, and
no answer carries a traceback, a secret or an id."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from types import TracebackType

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.metrics import Metrics
from bot.serving import split_listen, start_site

log = logging.getLogger(__name__)

STORE_PING_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 3.0
ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # a site on every address: the probe asks the loopback one


class OpsServer:
    """An aiohttp site for health checks and Prometheus scrapes; ``listen`` None: nothing is opened.

    The checks are the caller's: ``gateway_ok`` (connected to Discord's gateway), ``store_ping`` (raises or hangs when
    the store does not answer) and ``scheduler_running`` (the waiting line is served).
    """

    def __init__(
        self,
        listen: str | None,
        *,
        metrics: Metrics,
        gateway_ok: Callable[[], bool],
        store_ping: Callable[[], Awaitable[object]],
        scheduler_running: Callable[[], bool],
        store_ping_timeout_s: float = STORE_PING_TIMEOUT_S,
    ) -> None:
        self.listen = listen
        self.metrics = metrics
        self.gateway_ok = gateway_ok
        self.store_ping = store_ping
        self.scheduler_running = scheduler_running
        self.store_ping_timeout_s = store_ping_timeout_s
        self._runner: web.AppRunner | None = None
        self._failed: tuple[str, ...] = ()  # the last answer's failures: a change is logged, not every probe

    def __repr__(self) -> str:
        return f"OpsServer(listen={self.listen!r})"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz, allow_head=False)
        app.router.add_get("/metrics", self._metrics, allow_head=False)
        return app

    @property
    def url(self) -> str | None:
        """``http://host:port`` as bound (a port 0 becomes the one the system chose); None while closed or off."""
        if self._runner is None or not self._runner.addresses:
            return None
        host, port = self._runner.addresses[0][:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def __aenter__(self) -> OpsServer:
        if self.listen is None:
            return self
        # access_log None: probes every few seconds would drown the job lines
        self._runner = await start_site(self.app(), self.listen, access_log=None)
        log.info("ops endpoints on %s: /healthz and /metrics", self.url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def check(self) -> dict[str, str]:
        """What failed, by check (``gateway``, ``store``, ``scheduler``), with a reason fit for any reader."""
        failed: dict[str, str] = {}
        if not self.gateway_ok():
            failed["gateway"] = "the Discord gateway is not connected"
        try:
            async with asyncio.timeout(self.store_ping_timeout_s):
                await self.store_ping()
        except TimeoutError:
            failed["store"] = f"the store did not answer within {self.store_ping_timeout_s:g} s"
        except Exception as exc:
            # any store's error (sqlite3, asyncpg, OS): named by type only, its text may hold a DSN
            log.debug("healthz: the store ping failed", exc_info=exc)
            failed["store"] = f"the store did not answer ({type(exc).__name__})"
        if not self.scheduler_running():
            failed["scheduler"] = "the scheduler is not running"
        if tuple(failed) != self._failed:
            if failed:
                log.warning("healthz: unhealthy: %s", "; ".join(failed.values()))
            else:
                log.info("healthz: healthy again")
            self._failed = tuple(failed)
        return failed

    async def _healthz(self, _request: web.Request) -> web.Response:
        failed = await self.check()
        if not failed:
            return web.json_response({"status": "ok"})
        body = {"status": "unhealthy", "failed": list(failed), "reason": "; ".join(failed.values())}
        return web.json_response(body, status=503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        await self.metrics.refresh()
        # CONTENT_TYPE_LATEST carries its charset: aiohttp wants it in the header, not in content_type=
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def ask_healthz(listen: str, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """``fluxpaint healthcheck``: GET /healthz of the bot listening on ``listen``; (healthy, what it said)."""
    host, port = split_listen(listen)
    host = ANY_ADDRESS.get(host, host)
    url = f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200, resp.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:  # 503: the body says what failed
        with exc:
            return False, exc.read(4096).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        return False, json.dumps({"status": "unreachable", "reason": f"{url}: {exc}"})
