"""The fake Discord for several bot processes: each interaction goes to one connected process, as Discord sends a
guild's events to one shard only (the plain fake sends every event to every session).

A session that identified with ``"shard": [id, count]`` gets the interactions of the guilds of its shard, as
Discord routes them (``(guild_id >> 22) % count``). Sessions without one (replicas) share the interactions:
``route="member"`` sends each member's to one process, ``route="round_robin"`` alternates between them, which is
harsher than Discord: one member's commands reach two processes at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from tests.fakes.discord import FakeDiscord, GatewaySession

Route = Literal["member", "round_robin"]


class ShardedFakeDiscord(FakeDiscord):
    def __init__(self, *, route: Route = "round_robin", **knobs: Any) -> None:
        super().__init__(**knobs)
        self.route = route
        self.shards: dict[str, tuple[int, int]] = {}  # session id -> (shard id, shard count) it identified with
        self.routed: dict[str, int] = {}  # session id -> interactions sent to it
        self._turn = itertools.count()

    async def _identify(self, session: GatewaySession, data: dict[str, Any]) -> None:
        shard = data.get("shard")
        if isinstance(shard, list) and len(shard) == 2:
            self.shards[session.session_id] = (int(shard[0]), int(shard[1]))
        await super()._identify(session, data)

    def _live(self) -> list[GatewaySession]:
        return [s for s in self.sessions if s.ready and not s.ws.closed]

    def _pick(self, live: list[GatewaySession], data: dict[str, Any]) -> GatewaySession:
        sharded = [s for s in live if s.session_id in self.shards]
        if sharded:
            guild_id = int(data.get("guild_id") or 0)
            for session in sharded:
                shard_id, count = self.shards[session.session_id]
                if (guild_id >> 22) % count == shard_id:
                    return session
        if self.route == "member":
            user = (data.get("member") or {}).get("user") or data.get("user") or {}
            return live[int(user.get("id", 0)) % len(live)]
        return live[next(self._turn) % len(live)]

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send an interaction to one connected process (another, if that one's socket turns out dead); every
        other event to every process."""
        if event != "INTERACTION_CREATE":
            await super().dispatch(event, data)
            return
        while live := self._live():
            session = self._pick(live, data)
            try:
                await self._send(session, event, data)
            except ConnectionResetError:  # a killed bot whose socket is not yet seen closed
                session.ready = False
                continue
            self.routed[session.session_id] = self.routed.get(session.session_id, 0) + 1
            await self._notify()
            return
        raise RuntimeError("no bot is connected to the fake gateway (await fake.wait_ready() first)")


async def start_sharded_fake_discord(
    aiohttp_server: Callable[..., Awaitable[Any]], *, route: Route = "round_robin", **knobs: Any
) -> ShardedFakeDiscord:
    """Serve a ShardedFakeDiscord on 127.0.0.1 with pytest-aiohttp's ``aiohttp_server``."""
    fake = ShardedFakeDiscord(route=route, **knobs)
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("")).rstrip("/")
    return fake
