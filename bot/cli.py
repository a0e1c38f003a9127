"""fluxpaint run / check-config / inpaint / healthcheck: owns the settings, the HTTP session, the store, the metrics
and the bot."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import resource
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from bot import cli_inpaint
from bot.config import ConfigError, Settings, load_settings, masked_dump
from bot.errors import UserFacingError
from bot.fal import FalQueueClient
from bot.logs import setup_logging
from bot.looplag import LoopLagProbe
from bot.loras import LoraError
from bot.masks import MaskError, MaskSource
from bot.metrics import Metrics
from bot.ops import OpsServer, ask_healthz
from bot.pacing import RequestBudget, budget_trace

if TYPE_CHECKING:
    from bot.app import FluxpaintBot

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
USER_AGENT = "fluxpaint/0.1 (+https://github.com/fluxpaint)"


def session(settings: Settings) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=None, connect=settings.fal.connect_timeout_s)
    # Every job at fal holds one connection for its status stream: leave room beside them for submits, results
    # and downloads (aiohttp's default of 100 connections would stall everything at max_concurrent = 100).
    connector = aiohttp.TCPConnector(limit=settings.fal.max_concurrent + 64)
    return aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": USER_AGENT}, connector=connector)


@contextlib.asynccontextmanager
async def runtime(settings: Settings) -> AsyncIterator[FluxpaintBot]:
    """Build the bot with its session, store, metrics, notifier and service, and the ops endpoints when
    ``ops.listen`` is set; on exit stop them in order."""
    from bot.app import FluxpaintBot, point_at
    from bot.delivery import DiscordNotifier
    from bot.files import JobFiles
    from bot.painting import paint_links, paint_server
    from bot.service import JobService
    from bot.store import open_store

    data_dir = Path(settings.storage.data_dir)
    point_at(settings.discord)
    probe = LoopLagProbe(warn_s=settings.logging.loop_stall_warn_ms / 1000)
    async with probe, session(settings) as http, open_store(settings) as store:
        # read at each scrape; the service (and its scheduler) is built below
        metrics = Metrics(state_counts=store.count_by_state, line_length=lambda: service.scheduler.line_length)
        budget = RequestBudget(settings.discord.max_requests_per_s)
        bot = FluxpaintBot(settings, http_trace=budget_trace(budget, metrics=metrics))
        files = JobFiles(data_dir)
        notifier = DiscordNotifier(
            bot, settings.ui, budget=budget, max_request_bytes=settings.discord.max_request_bytes, files=files
        )
        service = JobService(
            settings=settings,
            store=store,
            files=files,
            fal=FalQueueClient(http, settings.fal, metrics=metrics),
            session=http,
            notifier=notifier,
            paint_links=await asyncio.to_thread(paint_links, settings),
            metrics=metrics,
        )
        bot.attach(service)
        ops = OpsServer(
            settings.ops.listen,
            metrics=metrics,
            gateway_ok=functools.partial(gateway_connected, bot),
            store_ping=store.ping,
            scheduler_running=lambda: service.scheduler.running,
        )
        try:
            async with bot, ops, paint_server(settings, service.painter):
                yield bot
                log.info("shutting down: no new jobs; in-flight calls get %.0f s", SHUTDOWN_GRACE_S)
        finally:
            await service.close(SHUTDOWN_GRACE_S)
            await notifier.close()
            await bot.close()


def gateway_connected(bot: FluxpaintBot) -> bool:
    """Logged in, and the gateway's websocket open now (discord.py stays "ready" while it reconnects)."""
    return bot.is_ready() and not bot.is_closed() and bot.ws is not None and bot.ws.open


def _enough_file_descriptors(settings: Settings) -> None:
    """Every job at fal holds a connection: raise the soft open-files limit (often 1024) when it is too low."""
    needed = settings.fal.max_concurrent + 64 + 256  # the pool, plus the database, logs and Discord
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            log.warning(
                "only %d open files allowed; fal.max_concurrent = %d may run out", target, settings.fal.max_concurrent
            )


async def run_bot(settings: Settings) -> int:
    _enough_file_descriptors(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with runtime(settings) as bot:
        runner = asyncio.create_task(bot.start(settings.discord.token.get_secret_value()), name="discord")
        stopper = asyncio.create_task(stop.wait(), name="signal")
        await asyncio.wait([runner, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    if runner.done() and not runner.cancelled() and (exc := runner.exception()) is not None:
        log.error("the Discord connection failed: %s", exc)
        return 1
    log.info("stopped; unfinished jobs resume at the next start")
    return 0


# fluxpaint inpaint (bot/cli_inpaint.py)


async def inpaint(
    settings: Settings,
    args: argparse.Namespace,
    chosen: cli_inpaint.Chosen,
    source: MaskSource,
    image: bytes,
    mask: bytes | None,
) -> int:
    async with session(settings) as http:
        return await cli_inpaint.inpaint_once(settings, http, args, chosen, source, image, mask)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxpaint", description="Inpainting with FLUX on fal.ai, in Discord.")
    parser.add_argument("--config", help="TOML config file (default: $FLUXPAINT_CONFIG or config.toml)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the Discord bot (the default)")
    sub.add_parser("check-config", help="validate the config and print it with secrets masked")
    sub.add_parser("healthcheck", help="exit 0 if the running bot's /healthz (ops.listen) answers 200, else 1")
    job = sub.add_parser("inpaint", help="run one job against fal from the terminal")
    cli_inpaint.add_arguments(job)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    try:
        settings = load_settings(args.config, require_discord=command != "inpaint")
    except ConfigError as exc:
        print("fluxpaint: invalid configuration:", file=sys.stderr)
        for line in exc.lines:
            print(f"  {line}", file=sys.stderr)
        return 1 if command == "healthcheck" else 2
    if command == "check-config":
        print(json.dumps(masked_dump(settings), indent=2, default=str))
        return 0
    if command == "healthcheck":  # Docker's HEALTHCHECK: 0 healthy, 1 not (2 means something else to Docker)
        if settings.ops.listen is None:
            print("fluxpaint: ops.listen is not set, so there is no /healthz to ask", file=sys.stderr)
            return 1
        healthy, said = ask_healthz(settings.ops.listen)
        print(said)
        return 0 if healthy else 1
    setup_logging(settings)
    if command == "inpaint":
        try:
            options, source = cli_inpaint.read_options(args)
            chosen = cli_inpaint.choose_loras(settings, args, options)  # before any file is read or sent
        except (ValueError, MaskError) as exc:
            print(f"fluxpaint: {exc}", file=sys.stderr)
            return 2
        except LoraError as exc:
            print(f"fluxpaint: {exc.message}", file=sys.stderr)
            return 2
        try:
            image = Path(args.image).read_bytes()
            mask = Path(args.mask).read_bytes() if args.mask else None
            Path(args.out).mkdir(parents=True, exist_ok=True)
            return asyncio.run(inpaint(settings, args, chosen, source, image, mask))
        except UserFacingError as exc:
            print(f"\nfluxpaint: {exc.message}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"\nfluxpaint: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    Path(settings.storage.data_dir).mkdir(parents=True, exist_ok=True)
    return asyncio.run(run_bot(settings))


if __name__ == "__main__":
    sys.exit(main())
