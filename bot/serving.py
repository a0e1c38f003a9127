"""The bot's own small HTTP servers (ops endpoints, the mask painter): an aiohttp app started on a host:port."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` → ``("127.0.0.1", 9108)``; ``"[::1]:9108"`` → ``("::1", 9108)``."""
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


async def start_site(app: web.Application, listen: str, **runner_options: Any) -> web.AppRunner:
    """``app`` served on ``listen``; the caller cleans the runner up.

    Raises:
        OSError: the address cannot be bound (in use, not this host's).
    """
    host, port = split_listen(listen)
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
