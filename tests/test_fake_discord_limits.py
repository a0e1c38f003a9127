"""The fake Discord's global rate limit (50 requests/s, interaction routes exempt) and its request-rate figures."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.fakes.discord import (
    API,
    FakeDiscord,
    RateStats,
    RecordedRequest,
    SlidingWindow,
    exempt_from_global,
    start_fake_discord,
)

LONG_WINDOW_S = 60.0  # far longer than any test runs: real time never frees the window mid-test


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 3), "red").save(out, format="PNG")
    return out.getvalue()


def bot_auth(fake: FakeDiscord) -> dict[str, str]:
    return {"Authorization": f"Bot {fake.bot_token}"}


@contextlib.asynccontextmanager
async def raw_bot(fake: FakeDiscord) -> AsyncIterator[tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]]:
    """An HTTP session and an identified gateway socket (HELLO, READY and GUILD_CREATE already read)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(fake.gateway_url + "?v=10&encoding=json") as ws:
        await ws.receive_json()
        await ws.send_json({"op": 2, "d": {"token": fake.bot_token, "intents": 0, "properties": {}}})
        for _ in range(2):  # READY, GUILD_CREATE
            await ws.receive_json()
        yield http, ws


async def get_channel(http: aiohttp.ClientSession, fake: FakeDiscord) -> aiohttp.ClientResponse:
    url = f"{fake.api_base}/channels/{fake.channel_id('general')}"
    async with http.get(url, headers=bot_auth(fake)) as response:
        await response.read()
        return response


def recorded(real_time: float, *, exempt: bool = False, status: int = 200) -> RecordedRequest:
    path = f"{API}/webhooks/1/token" if exempt else f"{API}/channels/1"
    return RecordedRequest("GET", path, 0.0, None, f"GET {path}", status, real_time=real_time, exempt=exempt)


async def test_the_request_past_the_global_limit_gets_a_global_429(aiohttp_server: Any) -> None:
    fake = await start_fake_discord(aiohttp_server, global_rate=(3, LONG_WINDOW_S))
    async with aiohttp.ClientSession() as http:
        statuses = [(await get_channel(http, fake)).status for _ in range(3)]
        url = f"{fake.api_base}/channels/{fake.channel_id('general')}/messages"
        async with http.post(url, json={"content": "one too many"}, headers=bot_auth(fake)) as limited:
            body = await limited.json()

    assert statuses == [200, 200, 200]
    assert limited.status == 429 and limited.headers["Content-Type"] == "application/json"
    assert body["message"] == "You are being rate limited." and body["global"] is True
    assert 0 < body["retry_after"] <= LONG_WINDOW_S and round(body["retry_after"], 3) == body["retry_after"]
    assert limited.headers["Retry-After"] == str(math.ceil(body["retry_after"]))
    assert limited.headers["X-RateLimit-Global"] == "true" and limited.headers["X-RateLimit-Scope"] == "global"
    assert limited.headers["Via"] == "1.1 google"  # without it discord.py takes the 429 for a Cloudflare ban
    [refused] = fake.global_limited
    assert fake.rate_limited == [refused] and refused.route_key == "POST /api/v10/channels/{cid}/messages"
    assert refused.error == body and not refused.exempt
    assert fake.messages_in("general") == []  # a refused request is never carried out
    assert fake.errors == [] and fake.unknown_routes == []


async def test_interaction_routes_and_downloads_are_neither_limited_nor_counted(aiohttp_server: Any) -> None:
    fake = await start_fake_discord(aiohttp_server, global_rate=(2, LONG_WINDOW_S))
    async with raw_bot(fake) as (http, ws):
        interaction = await fake.slash("echo", attachments={"image": ("a.png", png(), "image/png")})
        await ws.receive_json()  # INTERACTION_CREATE
        [attachment] = interaction.payload["data"]["resolved"]["attachments"].values()
        webhook = f"{fake.api_base}/webhooks/{fake.application_id}/{interaction.token}"
        exempt_calls = [
            ("GET", attachment["url"], None),
            ("POST", f"{fake.api_base}/interactions/{interaction.id}/{interaction.token}/callback", {"type": 5}),
            ("POST", f"{webhook}?wait=1", {"content": "the reply"}),
            ("POST", f"{webhook}?wait=1", {"content": "a followup"}),
            ("PATCH", f"{webhook}/messages/@original", {"content": "edited"}),
            ("GET", f"{webhook}/messages/@original", None),
        ]
        statuses = []
        for method, url, payload in exempt_calls:
            async with http.request(method, url, json=payload) as response:
                statuses.append(response.status)
        followup = interaction.followup_ids[0]
        async with http.delete(f"{webhook}/messages/{followup}") as deleted:
            statuses.append(deleted.status)
        bot_statuses = [(await get_channel(http, fake)).status for _ in range(3)]

    assert statuses == [200, 204, 200, 200, 200, 200, 204]
    assert bot_statuses == [200, 200, 429]  # the window held only these: the interaction routes left it free
    assert [r.exempt for r in fake.requests] == [True] * 7 + [False] * 3
    assert len(fake.global_limited) == 1 and fake.rate_stats().rate_limited == 1
    assert fake.errors == [] and fake.unknown_routes == []


async def test_without_a_global_rate_nothing_is_limited(aiohttp_server: Any) -> None:
    fake = await start_fake_discord(aiohttp_server, global_rate=None)
    async with aiohttp.ClientSession() as http:
        statuses = {(await get_channel(http, fake)).status for _ in range(60)}
    assert statuses == {200} and fake.rate_limited == []
    assert fake.rate_stats().total == 60


def test_refused_requests_do_not_count_in_the_window() -> None:
    window = SlidingWindow(2, 10.0)
    # at 10 the request at 0 has left; had the refusals at 2 and 5 counted, the window would still be full
    answers = [window.admit(now) for now in (0.0, 1.0, 2.0, 5.0, 10.0, 10.5, 11.0)]
    assert answers == [None, None, 8.0, 5.0, None, 0.5, None]


def test_the_default_refuses_the_51st_request_within_a_second() -> None:
    fake = FakeDiscord()
    assert fake.global_rate == (50, 1.0)
    window = SlidingWindow(*fake.global_rate)
    assert [window.admit(n / 100) for n in range(50)] == [None] * 50
    assert window.admit(0.5) == 0.5 and window.admit(1.0) is None  # the first one left at 1.0


@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        (f"{API}/interactions/1/token/callback", True),
        (f"{API}/webhooks/1/token", True),
        (f"{API}/webhooks/1/token/messages/@original", True),
        (f"{API}/webhooks/1/token/messages/2", True),
        ("/cdn/attachments/1/a.png", True),
        ("/gateway", True),
        (f"{API}/webhooks/1", False),  # a bot-token webhook route, not an interaction's
        (f"{API}/interactions/1/token/callbackx", False),
        (f"{API}/channels/1/messages", False),
        (f"{API}/users/@me", False),
        (f"{API}/gateway/bot", False),
    ],
    ids=lambda value: str(value).removeprefix(API),
)
def test_which_routes_the_global_limit_counts(path: str, exempt: bool) -> None:
    assert exempt_from_global(path) is exempt


# seven requests at 0.0 … 3.0; 0.2 and 0.9 are interaction routes, the one at 1.0 got a 429
HANDCRAFTED = [
    recorded(0.0),
    recorded(0.2, exempt=True),
    recorded(0.5),
    recorded(0.9, exempt=True),
    recorded(1.0, status=429),
    recorded(1.1),
    recorded(3.0),
]


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        # 0.2 … 1.1 is the busiest second (the request at 0.0 left at 1.0); without the exempt ones 0.5 … 1.1
        (None, None, RateStats(total=7, peak_per_s=5, peak_global_per_s=3, mean_per_s=7 / 3.0, rate_limited=1)),
        (0.0, 10.0, RateStats(total=7, peak_per_s=5, peak_global_per_s=3, mean_per_s=0.7, rate_limited=1)),
        (0.5, 1.1, RateStats(total=4, peak_per_s=4, peak_global_per_s=3, mean_per_s=4 / 0.6, rate_limited=1)),
        (1.5, None, RateStats(total=1, peak_per_s=1, peak_global_per_s=1, mean_per_s=1 / 1.5, rate_limited=0)),
        (3.0, 3.0, RateStats(total=1, peak_per_s=1, peak_global_per_s=1, mean_per_s=1.0, rate_limited=0)),
        (5.0, 6.0, RateStats(total=0, peak_per_s=0, peak_global_per_s=0, mean_per_s=0.0, rate_limited=0)),
    ],
    ids=["everything", "ten-seconds", "busy-part", "since-only", "zero-span", "nothing"],
)
def test_rate_stats_of_handcrafted_requests(since: float | None, until: float | None, expected: RateStats) -> None:
    fake = FakeDiscord()
    fake.requests = list(reversed(HANDCRAFTED))  # the sweep sorts them itself
    assert asdict(fake.rate_stats(since, until)) == pytest.approx(asdict(expected))


def test_rate_stats_sweeps_a_hundred_thousand_requests() -> None:
    fake = FakeDiscord()
    # 1/1024 s apart, exact in binary: request n and n + 1024 are exactly one second apart, so never together
    fake.requests = [recorded(n / 1024, exempt=n % 2 == 1) for n in range(100_000)]
    stats = fake.rate_stats()
    assert (stats.total, stats.peak_per_s, stats.peak_global_per_s) == (100_000, 1024, 512)
    assert stats.mean_per_s == pytest.approx(100_000 * 1024 / 99_999)
