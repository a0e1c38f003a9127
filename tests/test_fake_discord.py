"""The fake Discord is good enough for the real discord.py: login, sync, gateway, interactions, buttons, limits."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.fakes.discord import (
    DISCORD_EPOCH_MS,
    FakeDiscord,
    FakeInteraction,
    FakeMessage,
    InvocationError,
    ManualClock,
    start_fake_discord,
)

WEBHOOK_EDIT = "PATCH /api/v10/webhooks/{app}/{token}/messages/{mid}"

StartFake = Callable[..., Awaitable[FakeDiscord]]


def png(width: int = 4, height: int = 3) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(out, format="PNG")
    return out.getvalue()


class AgainButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"echo:again:(?P<size>\d+)"):
    def __init__(self, size: int) -> None:
        super().__init__(discord.ui.Button(label="Again", custom_id=f"echo:again:{size}"))
        self.size = size

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(int(match["size"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"again: {self.size} bytes", ephemeral=True)


class CaptionModal(discord.ui.Modal, title="New caption"):
    caption: discord.ui.TextInput[Any] = discord.ui.TextInput(label="Caption", custom_id="caption")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.edit_message(content=f"caption: {self.caption.value}")


class CaptionButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"echo:caption"):
    def __init__(self) -> None:
        super().__init__(discord.ui.Button(label="Caption", custom_id="echo:caption"))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls()

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(CaptionModal())


@app_commands.command(description="Send the image back")
@app_commands.describe(image="Any image", text="A caption")
async def echo(interaction: discord.Interaction[EchoBot], image: discord.Attachment, text: str) -> None:
    bot = interaction.client
    bot.interactions.append(interaction)
    await bot.gate.wait()
    await interaction.response.defer(thinking=True)
    data = await image.read()
    for step in (1, 2, 3):
        await interaction.edit_original_response(content=f"step {step}/3")
    view = discord.ui.View(timeout=None)
    view.add_item(AgainButton(len(data)))
    view.add_item(CaptionButton())
    result = discord.File(io.BytesIO(data), filename="echo.png")
    await interaction.edit_original_response(content=f"{text}: {len(data)} bytes", attachments=[result], view=view)
    await interaction.followup.send("followup")


class EchoBot(commands.Bot):
    def __init__(self) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            guild_ready_timeout=0.1,
            help_command=None,
        )
        self.gate = asyncio.Event()  # a test clears it to hold the defer back
        self.gate.set()
        self.interactions: list[discord.Interaction[EchoBot]] = []
        self.failures: list[BaseException] = []
        self.failed = asyncio.Event()

    async def setup_hook(self) -> None:
        self.add_dynamic_items(AgainButton, CaptionButton)
        self.tree.add_command(echo)
        self.tree.on_error = self.record_failure  # type: ignore[method-assign]
        await self.tree.sync()

    async def record_failure(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        self.failures.append(error.original if isinstance(error, app_commands.CommandInvokeError) else error)
        self.failed.set()


@pytest.fixture
def start(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> StartFake:
    async def start(**knobs: Any) -> FakeDiscord:
        fake = await start_fake_discord(aiohttp_server, **knobs)
        monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
        return fake

    return start


@contextlib.asynccontextmanager
async def running(fake: FakeDiscord, bot: EchoBot | None = None) -> AsyncIterator[EchoBot]:
    bot = bot or EchoBot()
    await bot.login(fake.bot_token)  # runs setup_hook, so commands are synced before the gateway opens
    connection = asyncio.create_task(bot.connect(reconnect=False))
    try:
        async with asyncio.timeout(5):
            await bot.wait_until_ready()
        yield bot
    finally:
        await bot.close()
        await connection


def shown(interaction: FakeInteraction) -> FakeMessage:
    message = interaction.original()
    assert message is not None, "the interaction has no reply"
    return message


async def run_echo(fake: FakeDiscord, image: bytes, **kwargs: Any) -> FakeInteraction:
    interaction = await fake.slash(
        "echo", options={"text": "hi"}, attachments={"image": ("cat.png", image, "image/png")}, **kwargs
    )
    await fake.wait_for(lambda: len(interaction.followups()) == 1)
    return interaction


async def test_slash_command_round_trip_with_file_button_and_modal(start: StartFake) -> None:
    fake = await start()
    image = png()
    async with running(fake) as bot:
        with pytest.raises(InvocationError, match="'image' is required"):
            await fake.slash("echo", options={"text": "hi"})  # the client checks the synced schema
        interaction = await run_echo(fake, image)

        defer = interaction.callbacks[0]
        assert (defer.type, defer.status) == (5, 200)
        assert defer.time - interaction.created_at < fake.first_response_deadline_s
        assert any(r.path.startswith("/cdn/attachments/") and r.status == 200 for r in fake.requests)
        edits = [r.json.get("content") for r in fake.requests if r.route_key == WEBHOOK_EDIT]
        assert edits == ["step 1/3", "step 2/3", "step 3/3", f"hi: {len(image)} bytes"]
        original = interaction.original()
        assert original is not None and not original.loading and original.type == 20
        assert original.content == f"hi: {len(image)} bytes"
        [attachment] = original.attachments
        assert attachment.filename == "echo.png" and attachment.data == image
        with Image.open(io.BytesIO(attachment.data)) as decoded:
            assert decoded.size == (4, 3)
        assert original.custom_ids() == [f"echo:again:{len(image)}", "echo:caption"]
        assert len(fake.edits_of(original.id)) == 4
        assert [m.content for m in interaction.followups()] == ["followup"]
        assert fake.rate_limited == []

        click = await fake.click(original.id, f"echo:again:{len(image)}", user="bob")
        await fake.wait_for(lambda: click.original() is not None)
        reply = click.original()
        assert reply is not None and reply.content == f"again: {len(image)} bytes" and reply.ephemeral
        assert [(cb.type, cb.status) for cb in click.callbacks] == [(4, 200)]

        opener = await fake.click(original.id, "echo:caption")
        await fake.wait_for(lambda: opener.modal is not None)
        submit = await fake.submit_modal(opener, {"caption": "a red square"})
        await fake.wait_for(lambda: submit.acknowledged)
        assert interaction.original() is original and original.content == "caption: a red square"
        assert bot.failures == []

    [(scope, synced)] = fake.command_syncs
    assert scope is None and [c["name"] for c in synced] == ["echo"]
    assert fake.unknown_routes == [] and fake.errors == []


async def test_expired_token_gives_401_and_the_channel_routes_still_work(start: StartFake) -> None:
    clock = ManualClock()
    # room for a fifth edit: the one that empties a bot-route bucket sleeps Reset-After before it returns
    fake = await start(clock=clock, edit_rate=(10, 5.0))
    async with running(fake) as bot:
        interaction = await run_echo(fake, png())
        clock.advance(fake.token_ttl_s + 1)
        live = bot.interactions[0]
        with pytest.raises(discord.HTTPException) as caught:
            await live.edit_original_response(content="too late")
        assert (caught.value.status, caught.value.code) == (401, 50027)
        assert not isinstance(caught.value, discord.NotFound | discord.Forbidden)

        assert live.channel is not None and isinstance(live.channel, discord.TextChannel)
        await live.channel.send("fallback")
        await live.channel.get_partial_message(shown(interaction).id).edit(content="edited by channel")
        await live.user.send("your result")
    assert [m.content for m in fake.messages_in("general")][-1] == "fallback"
    assert shown(interaction).content == "edited by channel"
    assert [m.content for m in fake.messages_in("@alice")] == ["your result"]
    assert fake.unknown_routes == [] and fake.errors == []


async def test_a_defer_after_the_deadline_is_an_unknown_interaction(start: StartFake) -> None:
    clock = ManualClock()
    fake = await start(clock=clock)
    async with running(fake) as bot:
        bot.gate.clear()
        interaction = await fake.slash("echo", options={"text": "hi"}, attachments={"image": ("a.png", png(), None)})
        clock.advance(fake.first_response_deadline_s + 0.5)
        bot.gate.set()
        async with asyncio.timeout(5):
            await bot.failed.wait()
    [failure] = bot.failures
    assert isinstance(failure, discord.NotFound) and failure.code == 10062
    assert [(cb.type, cb.status) for cb in interaction.callbacks] == [(5, 404)]
    assert interaction.original() is None


async def test_listed_attachments_are_kept_and_new_files_added(start: StartFake) -> None:
    fake = await start(edit_rate=(20, 5.0))
    async with running(fake) as bot:
        interaction = await run_echo(fake, png())
        message = await bot.interactions[0].original_response()
        note = discord.File(io.BytesIO(b"a note"), filename="note.txt")
        await message.edit(attachments=[*message.attachments, note])
        original = shown(interaction)
        assert original.files == {"echo.png": png(), "note.txt": b"a note"}
        assert [a.content_type for a in original.attachments] == ["image/png", "text/plain"]
        await message.edit(content="text only")  # no attachments key: the files stay
        assert len(original.attachments) == 2
        await message.edit(attachments=[])
        assert original.attachments == [] and original.content == "text only"
        with pytest.raises(discord.HTTPException) as caught:
            await message.edit(content=None, view=None)  # nothing left to show
        assert (caught.value.status, caught.value.code) == (400, 50006)
    assert fake.unknown_routes == [] and fake.errors == []


@pytest.mark.parametrize("ratelimit_headers", [False, True], ids=["429-then-retry", "paced-by-headers"])
async def test_edits_beyond_the_rate_limit(start: StartFake, ratelimit_headers: bool) -> None:
    fake = await start(edit_rate=(2, 0.3), ratelimit_headers=ratelimit_headers)
    async with running(fake):
        interaction = await run_echo(fake, png())
    statuses = [r.status for r in fake.requests if r.route_key == WEBHOOK_EDIT]
    if ratelimit_headers:
        assert statuses == [200] * 4  # discord.py waited for X-RateLimit-Reset-After by itself
    else:
        assert 429 in statuses and statuses.count(200) == 4  # Via + JSON body: discord.py slept and retried
    assert shown(interaction).content.startswith("hi: ")
    assert fake.unknown_routes == [] and fake.errors == []


async def test_discord_rules_on_bot_routes(start: StartFake) -> None:
    fake = await start(upload_limit_bytes=1024)
    async with running(fake) as bot:
        channel = bot.get_channel(fake.channel_id("general"))
        assert isinstance(channel, discord.TextChannel) and not channel.is_nsfw()
        nsfw = bot.get_channel(fake.channel_id("nsfw-art"))
        assert isinstance(nsfw, discord.TextChannel) and nsfw.is_nsfw()
        assert channel.permissions_for(channel.guild.me).attach_files

        cases: list[tuple[dict[str, Any], int, int]] = [
            ({"content": "x" * 2001}, 400, 50035),
            ({"content": ""}, 400, 50006),
            ({"files": [discord.File(io.BytesIO(b"x"), f"{n}.txt") for n in range(11)]}, 400, 50035),
            ({"embeds": [discord.Embed(description="x" * 4000), discord.Embed(description="y" * 2001)]}, 400, 50035),
            ({"file": discord.File(io.BytesIO(b"x" * 2000), "big.bin")}, 413, 40005),
        ]
        for kwargs, status, code in cases:
            with pytest.raises(discord.HTTPException) as caught:
                await channel.send(**kwargs)
            assert (caught.value.status, caught.value.code) == (status, code), kwargs

        fake.forbidden_channels.add(channel.id)
        with pytest.raises(discord.Forbidden) as forbidden:
            await channel.send("hello")
        assert forbidden.value.code == 50013
    assert fake.messages_in("general") == []
    assert fake.unknown_routes == [] and fake.errors == []


@contextlib.asynccontextmanager
async def raw_bot(fake: FakeDiscord) -> AsyncIterator[tuple[aiohttp.ClientSession, Any, list[dict[str, Any]]]]:
    """A hand-written client: an HTTP session and an identified gateway socket, plus the frames seen so far."""
    async with aiohttp.ClientSession() as http, http.ws_connect(fake.gateway_url + "?v=10&encoding=json") as ws:
        frames = [await ws.receive_json()]
        await ws.send_json({"op": 2, "d": {"token": fake.bot_token, "intents": 0, "properties": {}}})
        frames += [await ws.receive_json(), await ws.receive_json()]
        yield http, ws, frames


async def test_gateway_speaks_what_discord_py_expects(start: StartFake) -> None:
    fake = await start()
    async with raw_bot(fake) as (http, ws, [hello, ready, guild]):
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
        await ws.send_json({"op": 1, "d": 2})
        assert (await ws.receive_json())["op"] == 11
        assert (ready["t"], ready["s"], ready["d"]["resume_gateway_url"]) == ("READY", 1, fake.gateway_url)
        assert ready["d"]["application"]["id"] == str(fake.application_id)
        assert {c["name"]: c["nsfw"] for c in guild["d"]["channels"]} == {"general": False, "nsfw-art": True}

        await fake.slash("echo", user="mod", options={"text": "hi", "n": 2, "x": 0.5, "flag": True})
        event = await ws.receive_json()
        assert (event["t"], event["s"]) == ("INTERACTION_CREATE", 3)
        payload = event["d"]
        created_ms = (int(payload["id"]) >> 22) + DISCORD_EPOCH_MS
        assert abs(created_ms / 1000 - time.time()) < 5
        assert [o["type"] for o in payload["data"]["options"]] == [3, 4, 10, 5]
        assert int(payload["member"]["permissions"]) & (1 << 13)  # mod has MANAGE_MESSAGES
        assert payload["attachment_size_limit"] == fake.upload_limit_bytes
        assert payload["channel"]["name"] == "general" and payload["channel"]["nsfw"] is False

        async with http.ws_connect(fake.gateway_url) as again:
            await again.receive_json()  # HELLO
            resume = {"token": fake.bot_token, "session_id": ready["d"]["session_id"], "seq": 3}
            await again.send_json({"op": 6, "d": resume})
            assert (await again.receive_json())["t"] == "RESUMED"
    assert fake.errors == []


async def test_interaction_routes_follow_discord(start: StartFake) -> None:
    fake = await start(edit_rate=(2, 5.0))
    async with raw_bot(fake) as (http, ws, _):
        interaction = await fake.slash("echo", attachments={"image": ("a.png", png(), None)})
        await ws.receive_json()
        [attachment] = interaction.payload["data"]["resolved"]["attachments"].values()
        async with http.get(attachment["url"]) as cdn:
            assert cdn.status == 200 and await cdn.read() == png()
        async with http.get(attachment["url"].replace("hm=", "hm=0")) as tampered:
            assert tampered.status == 404

        callback = f"{fake.api_base}/interactions/{interaction.id}/{interaction.token}/callback?with_response=1"
        async with http.post(callback, json={"type": 5}) as first:
            assert first.status == 200 and first.headers["Content-Type"] == "application/json"
            assert (await first.json())["interaction"]["response_message_loading"] is True
        async with http.post(callback, json={"type": 5}) as second:
            assert (second.status, (await second.json())["code"]) == (400, 40060)
        followup = f"{fake.api_base}/webhooks/{fake.application_id}/{interaction.token}?wait=1"
        async with http.post(followup, json={"content": "done", "flags": 64}) as first_followup:
            filled = await first_followup.json()  # fills the loading reply; its ephemeral flag is ignored
        assert int(filled["id"]) == interaction.original_message_id and filled["flags"] == 0
        assert interaction.followups() == []

        edit = f"{fake.api_base}/webhooks/{fake.application_id}/{interaction.token}/messages/@original"
        for n in range(2):
            async with http.patch(edit, json={"content": str(n)}) as ok:
                assert ok.status == 200 and ok.headers["X-RateLimit-Remaining"] == str(1 - n)
        async with http.patch(edit, json={"content": "2"}) as limited:
            body = await limited.json()
        assert limited.status == 429 and limited.headers["Content-Type"] == "application/json"
        assert limited.headers["Via"] == "1.1 google" and int(limited.headers["Retry-After"]) >= 1
        expected = {"X-RateLimit-Limit", "X-RateLimit-Bucket", "X-RateLimit-Reset-After", "X-RateLimit-Scope"}
        assert expected <= set(limited.headers)
        assert body["global"] is False and 0 < body["retry_after"] <= 5
        assert shown(interaction).content == "1" and len(fake.rate_limited) == 1

        async with http.get(f"{fake.api_base}/users/@me") as no_token:
            assert no_token.status == 401
        async with http.get(f"{fake.api_base}/guilds/{fake.guild_id}/roles") as unknown:
            assert unknown.status == 404
    assert fake.unknown_routes == [f"GET /api/v10/guilds/{fake.guild_id}/roles"]
    assert fake.errors == []


async def test_channel_history_is_newest_first_and_never_shows_a_nonce(start: StartFake) -> None:
    fake = await start()
    async with running(fake) as bot:
        interaction = await run_echo(fake, png())  # the reply and its followup are channel messages too
        click = await fake.click(shown(interaction).id, f"echo:again:{len(png())}")
        await fake.wait_for(lambda: click.original() is not None)  # an ephemeral reply: never in the history
        channel = bot.get_channel(fake.channel_id("general"))
        assert isinstance(channel, discord.TextChannel)
        sent = [await channel.send(f"m{n}", nonce=f"n{n}") for n in range(5)]

        latest = [m async for m in channel.history(limit=3)]
        everything = [m async for m in channel.history(limit=None)]
        after = [m async for m in channel.history(after=sent[1], oldest_first=True)]
        before = [m async for m in channel.history(before=sent[3], limit=2)]
        around = [m async for m in channel.history(around=sent[2], limit=3)]

    assert [m.content for m in latest] == ["m4", "m3", "m2"]
    assert [m.content for m in everything] == ["m4", "m3", "m2", "m1", "m0", "followup", f"hi: {len(png())} bytes"]
    assert all(m.nonce is None and m.author.id == int(fake.bot_user["id"]) for m in everything)
    assert [m.content for m in after] == ["m2", "m3", "m4"]
    assert [m.content for m in before] == ["m2", "m1"]
    assert [m.content for m in around] == ["m3", "m2", "m1"]
    assert fake.refused == [] and fake.unknown_routes == [] and fake.errors == []


async def test_channel_history_answers_fifty_messages_by_default(start: StartFake) -> None:
    fake = await start(global_rate=None)  # 55 posts in a row: about history, not the global limit
    cid = fake.channel_id("general")
    async with raw_bot(fake) as (http, _ws, _frames):
        auth = {"Authorization": f"Bot {fake.bot_token}"}
        url = f"{fake.api_base}/channels/{cid}/messages"
        for n in range(55):
            async with http.post(url, json={"content": f"m{n}", "nonce": str(n)}, headers=auth) as posted:
                assert posted.status == 200 and (await posted.json())["nonce"] == str(n)
        async with http.get(url, headers=auth) as page:
            history = await page.json()
        async with http.get(f"{url}?limit=101", headers=auth) as too_many:
            assert too_many.status == 400 and (await too_many.json())["code"] == 50035

    assert [m["content"] for m in history] == [f"m{n}" for n in range(54, 4, -1)]
    assert all("nonce" not in m and {"author", "embeds", "attachments", "content"} <= set(m) for m in history)
    assert [r.query for r in fake.refused] == [{"limit": "101"}]


# autocomplete: the choices a member sees while typing an option declared with autocomplete

STYLES = ["watercolor", "watercolor wash", "ink", "oil"]
Choice = app_commands.Choice


@app_commands.command(description="Paint in a style")
@app_commands.describe(style="A style from the catalog", note="Anything to add")
async def paint(interaction: discord.Interaction[StyleBot], style: str, note: str | None = None) -> None:
    await interaction.response.send_message(f"painting in {style}", ephemeral=True)


@paint.autocomplete("style")
async def style_choices(interaction: discord.Interaction[StyleBot], current: str) -> list[Choice[str]]:
    bot = interaction.client
    bot.typed.append((current, interaction.namespace.note))
    await bot.gate.wait()
    return bot.suggest(current)


class StyleBot(EchoBot):
    """EchoBot plus /paint, whose ``style`` option autocompletes with what ``suggest`` returns."""

    def __init__(self) -> None:
        super().__init__()
        self.typed: list[tuple[str, str | None]] = []  # what each autocomplete saw: (focused value, note)
        self.suggest: Callable[[str], list[Choice[Any]]] = lambda current: [
            Choice(name=s.title(), value=s) for s in STYLES if s.startswith(current)
        ]

    async def setup_hook(self) -> None:
        self.tree.add_command(paint)
        await super().setup_hook()


def error_codes(body: dict[str, Any] | None, path: str) -> list[str]:
    """The codes Discord's 50035 answer lists under ``path`` ("data.choices.0.name")."""
    assert body is not None and body["code"] == 50035, body
    node = body["errors"]
    for key in path.split("."):
        assert key in node, f"no error at {path!r}: {body['errors']}"
        node = node[key]
    return [e["code"] for e in node["_errors"]]


async def test_autocomplete_shows_the_member_the_bot_s_choices_for_what_they_typed(start: StartFake) -> None:
    fake = await start()
    async with running(fake, bot := StyleBot()):
        interaction = await fake.autocomplete("paint", focused="style", value="water", options={"note": "sunny"})
        await fake.wait_for(lambda: interaction.choices is not None)
        with pytest.raises(InvocationError, match="not declared with autocomplete"):
            await fake.autocomplete("paint", focused="note", value="s")  # Discord sends nothing for it
        with pytest.raises(InvocationError, match="no option 'size'"):
            await fake.autocomplete("paint", focused="size", value="2")
        assert bot.failures == []

    assert interaction.choices == [
        {"name": "Watercolor", "value": "watercolor"},
        {"name": "Watercolor Wash", "value": "watercolor wash"},
    ]
    assert bot.typed == [("water", "sunny")]  # the focused value reached the callback, and the other option too
    payload = interaction.payload
    assert payload["type"] == 4 and "resolved" not in payload["data"]
    assert payload["data"]["options"] == [
        {"name": "note", "type": 3, "value": "sunny"},
        {"name": "style", "type": 3, "value": "water", "focused": True},
    ]
    [(_, synced)] = fake.command_syncs
    style = next(o for c in synced if c["name"] == "paint" for o in c["options"] if o["name"] == "style")
    assert style["autocomplete"] is True
    [answer] = interaction.callbacks
    assert (answer.type, answer.status) == (8, 200)
    latency = interaction.response_latency_s
    assert latency is not None and 0 <= latency < fake.first_response_deadline_s
    assert interaction.original() is None and fake.messages_in("general") == []  # choices are no message
    assert fake.refused == [] and fake.unknown_routes == [] and fake.errors == []


ANSWERS: dict[str, tuple[list[Choice[Any]], str | None, str | None]] = {
    # the bot's choices, and where Discord reports their problem (None: Discord takes them)
    "25-choices": ([Choice(name=f"s{n}", value=f"s{n}") for n in range(25)], None, None),
    "26-choices": ([Choice(name=f"s{n}", value=f"s{n}") for n in range(26)], "data.choices", "BASE_TYPE_MAX_LENGTH"),
    "name-100-value-100": ([Choice(name="x" * 100, value="y" * 100)], None, None),
    "name-101": ([Choice(name="x" * 101, value="x")], "data.choices.0.name", "BASE_TYPE_BAD_LENGTH"),
    "value-101": ([Choice(name="x", value="x" * 101)], "data.choices.0.value", "BASE_TYPE_MAX_LENGTH"),
    "integer-for-a-string-option": ([Choice(name="one", value=1)], "data.choices.0.value", "BASE_TYPE_STRING"),
    "no-choices": ([], None, None),
}


@pytest.mark.parametrize(("choices", "refused_at", "code"), ANSWERS.values(), ids=ANSWERS.keys())
async def test_autocomplete_choices_are_taken_or_refused_as_discord_does(
    start: StartFake, choices: list[Choice[Any]], refused_at: str | None, code: str | None
) -> None:
    fake = await start()
    async with running(fake, bot := StyleBot()):
        bot.suggest = lambda current: choices
        interaction = await fake.autocomplete("paint", focused="style", value="")
        await fake.wait_for(lambda: bool(interaction.callbacks) and interaction.callbacks[-1].status != 0)

    [answer] = interaction.callbacks
    if refused_at is None:
        assert answer.status == 200 and interaction.choices == [c.to_dict() for c in choices]
        assert fake.refused == []
        return
    assert answer.status == 400 and interaction.choices is None  # the member sees no choices
    [refused] = fake.refused
    assert error_codes(refused.error, refused_at) == [code]
    assert not interaction.acknowledged


async def test_an_autocomplete_answered_after_3_s_is_an_unknown_interaction(start: StartFake) -> None:
    clock = ManualClock()
    fake = await start(clock=clock)
    async with running(fake, bot := StyleBot()):
        bot.gate.clear()
        interaction = await fake.autocomplete("paint", focused="style", value="i")
        clock.advance(fake.first_response_deadline_s + 0.5)
        bot.gate.set()
        await fake.wait_for(lambda: bool(interaction.callbacks) and interaction.callbacks[-1].status != 0)

    assert [(cb.type, cb.status) for cb in interaction.callbacks] == [(8, 404)]
    assert bot.typed == [("i", None)]
    refusal = fake.requests[-1]
    assert refusal.error is not None and refusal.error["code"] == 10062
    assert interaction.choices is None and interaction.response_latency_s is None


async def test_autocomplete_is_answered_with_choices_and_choices_answer_only_autocomplete(start: StartFake) -> None:
    fake = await start()
    find = {"type": 1, "name": "find", "description": "Find a LoRA", "options": []}
    find["options"] = [
        {"type": 4, "name": "page", "description": "Which page"},
        {"type": 3, "name": "lora", "description": "A LoRA", "autocomplete": True},
    ]
    commands = [{"name": "catalog", "description": "The catalog", "options": [find]}]
    async with raw_bot(fake) as (http, ws, _frames):
        auth = {"Authorization": f"Bot {fake.bot_token}"}
        sync = f"{fake.api_base}/applications/{fake.application_id}/commands"
        async with http.put(sync, json=commands, headers=auth) as synced:
            assert synced.status == 200

        typing = await fake.autocomplete("catalog find", focused="lora", value="wat", options={"page": 2})
        event = await ws.receive_json()
        assert event["t"] == "INTERACTION_CREATE" and event["d"]["type"] == 4
        assert event["d"]["data"]["options"] == [
            {
                "name": "find",
                "type": 1,
                "options": [
                    {"name": "page", "type": 4, "value": 2},
                    {"name": "lora", "type": 3, "value": "wat", "focused": True},
                ],
            }
        ]
        callback = f"{fake.api_base}/interactions/{typing.id}/{typing.token}/callback"
        for refused in ({"type": 5}, {"type": 4, "data": {"content": "hi"}}):  # cannot be deferred or replied to
            async with http.post(callback, json=refused) as answer:
                assert answer.status == 400 and error_codes(await answer.json(), "type")
        choices = {"type": 8, "data": {"choices": [{"name": "Watercolor", "value": "watercolor"}]}}
        async with http.post(callback, json=choices) as answer:
            assert answer.status == 204
        async with http.post(callback, json=choices) as again:
            assert (again.status, (await again.json())["code"]) == (400, 40060)
        followup_url = f"{fake.api_base}/webhooks/{fake.application_id}/{typing.token}"
        async with http.post(followup_url, json={"content": "x"}) as followup:  # choices are its only answer
            assert (followup.status, (await followup.json())["code"]) == (404, 10015)

        sent = await fake.slash("catalog find", options={"lora": "watercolor"})
        await ws.receive_json()
        url = f"{fake.api_base}/interactions/{sent.id}/{sent.token}/callback"
        async with http.post(url, json=choices) as answer:
            assert answer.status == 400 and error_codes(await answer.json(), "type")
        with pytest.raises(InvocationError, match="not synced"):
            await fake.autocomplete("echo", focused="text", value="x")

    assert typing.choices == [{"name": "Watercolor", "value": "watercolor"}]
    assert [(cb.type, cb.status) for cb in typing.callbacks] == [(5, 400), (4, 400), (8, 200), (8, 400)]
    assert sent.choices is None and not sent.acknowledged
    assert fake.messages_in("general") == [] and fake.errors == []
