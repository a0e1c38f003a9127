"""The fakes refuse what Discord and fal refuse: each request is checked against the schemas in tests/specs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
import pytest

from tests.conftest import MakeRig
from tests.fakes.discord import FakeDiscord, FakeInteraction, start_fake_discord
from tests.fakes.fal import FakeFal, start_fake_fal
from tests.rig import fixture
from tests.specs.discord_rules import command_problems
from tests.test_fake_discord import png, raw_bot

COFFEE, COFFEE_MASK = fixture("coffee.png"), fixture("coffee_mask.png")


def errors_at(body: dict[str, Any], path: str) -> list[dict[str, str]]:
    """The ``_errors`` Discord lists under ``path`` ("embeds.0.title") of a 50035 answer."""
    node = body["errors"]
    for key in path.split(".") if path else []:
        assert key in node, f"no error at {path!r}: {json.dumps(body['errors'])}"
        node = node[key]
    return list(node["_errors"])


# /inpaint: the seed bug of issue 10, against the bot's own commands


async def test_the_bot_s_commands_pass_discord_s_schema(make_rig: MakeRig) -> None:
    rig = await make_rig()

    [(_, synced)] = rig.discord.command_syncs
    inpaint = next(c for c in synced if c["name"] == "inpaint")
    seed = next(o for o in inpaint["options"] if o["name"] == "seed")
    assert seed["max_value"] == 2**53 - 1  # Int53, the most Discord takes
    assert rig.discord.refused == []


async def test_an_integer_option_above_int53_is_refused_as_discord_does(make_rig: MakeRig) -> None:
    rig = await make_rig()
    bot = rig.bot
    assert bot is not None and bot.application_id is not None
    payload = [command.to_dict(bot.tree) for command in bot.tree.get_commands()]
    index = next(n for n, c in enumerate(payload) if c["name"] == "inpaint")
    option = [o["name"] for o in payload[index]["options"]].index("seed")
    payload[index]["options"][option]["max_value"] = 2**53  # what /inpaint declared before issue 10

    with pytest.raises(discord.HTTPException) as caught:
        await bot.http.bulk_upsert_global_commands(bot.application_id, payload)

    assert (caught.value.status, caught.value.code) == (400, 50035)
    [refused] = rig.discord.refused
    assert refused.error is not None and refused.error["message"] == "Invalid Form Body"
    [problem] = errors_at(refused.error, f"{index}.options.{option}.max_value")
    assert problem == {
        "code": "NUMBER_TYPE_MAX",
        "message": "int value should be less than or equal to 9007199254740991.",
    }
    assert len(rig.discord.command_syncs) == 1  # the refused overwrite changed nothing


async def test_a_whole_inpaint_job_sends_nothing_either_service_refuses(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"positions": [1, 0]}, discord={"edit_rate": (50, 5.0)})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, num_images=2, output_format="png", seed=7)
    final = await rig.wait_text(interaction, "Inpainted", timeout=30)

    assert len(final.attachments) == 2
    assert rig.discord.refused == [] and rig.fal.refused == []
    assert rig.discord.unknown_routes == [] and rig.discord.errors == []


# Discord: one request per case, straight onto the wire

Route = Callable[[FakeDiscord, FakeInteraction], tuple[str, str]]
ROUTES: dict[str, Route] = {
    "send": lambda f, i: ("POST", f"/channels/{f.channel_id('general')}/messages"),
    "history": lambda f, i: ("GET", f"/channels/{f.channel_id('general')}/messages"),
    "callback": lambda f, i: ("POST", f"/interactions/{i.id}/{i.token}/callback"),
    "followup": lambda f, i: ("POST", f"/webhooks/{f.application_id}/{i.token}"),
    "edit": lambda f, i: ("PATCH", f"/webhooks/{f.application_id}/{i.token}/messages/@original"),
    "commands": lambda f, i: ("PUT", f"/applications/{f.application_id}/commands"),
}
NEEDS_DEFER = {"followup", "edit"}


@dataclass(frozen=True)
class Wire:
    """A request, and where Discord reports its problem (``refused_at``, dotted; None: Discord takes it)."""

    route: str
    body: Any = None
    refused_at: str | None = None
    code: str | None = None
    query: str = ""
    files: int = 0  # multipart: the body as payload_json, plus files[0..n-1]


def command(**changes: Any) -> dict[str, Any]:
    seed = {"type": 4, "name": "seed", "description": "Repeat a result", "min_value": 0, "max_value": 2**53 - 1}
    base = {"name": "inpaint", "description": "Repaint", "type": 1, "options": [seed]}
    return base | changes


def option(name: str, **extra: Any) -> dict[str, Any]:
    return {"type": 3, "name": name, "description": "Some text"} | extra


def button(custom_id: str) -> list[dict[str, Any]]:
    return [{"type": 1, "components": [{"type": 2, "style": 1, "label": "Cancel", "custom_id": custom_id}]}]


# 8 options of 1102 characters each: each within its limits, together over a command's 8000
BIG_OPTIONS = [
    option(f"o{n}", description="x" * 100, choices=[{"name": "x" * 100, "value": "y" * 100}] * 5) for n in range(8)
]


def embed_fields(count: int, name: str = "n", value: str = "v") -> list[dict[str, Any]]:
    return [{"fields": [{"name": name, "value": value}] * count}]


DISCORD_CASES = {
    # message bodies: the spec, kept to the docs where they are stricter
    "content-2000": Wire("send", {"content": "x" * 2000}),
    "content-2001-on-the-channel": Wire("send", {"content": "x" * 2001}, "content", "BASE_TYPE_MAX_LENGTH"),
    "content-2001-on-the-webhook": Wire("edit", {"content": "x" * 2001}, "content", "BASE_TYPE_MAX_LENGTH"),
    "title-257": Wire("send", {"embeds": [{"title": "x" * 257}]}, "embeds.0.title", "BASE_TYPE_MAX_LENGTH"),
    "description-4097": Wire("send", {"embeds": [{"description": "x" * 4097}]}, "embeds.0.description"),
    "26-fields": Wire("send", {"embeds": embed_fields(26)}, "embeds.0.fields", "BASE_TYPE_MAX_LENGTH"),
    "field-name-257": Wire("send", {"embeds": embed_fields(1, name="x" * 257)}, "embeds.0.fields.0.name"),
    "field-value-1025": Wire("send", {"embeds": embed_fields(1, value="x" * 1025)}, "embeds.0.fields.0.value"),
    "empty-field-value": Wire("send", {"embeds": embed_fields(1, value="")}, "embeds.0.fields.0.value"),
    "footer-2049": Wire("send", {"embeds": [{"footer": {"text": "x" * 2049}}]}, "embeds.0.footer.text"),
    "11-embeds": Wire("send", {"embeds": [{"title": "t"}] * 11}, "embeds", "BASE_TYPE_MAX_LENGTH"),
    "embeds-over-6000": Wire("send", {"embeds": [{"description": "x" * 4000}, {"description": "y" * 2001}]}, "embeds"),
    "custom-id-100": Wire("edit", {"components": button("x" * 100)}),
    "custom-id-101": Wire("edit", {"components": button("x" * 101)}, "components.0.components.0.custom_id"),
    "button-style-9": Wire(
        "edit",
        {"components": [{"type": 1, "components": [{"type": 2, "style": 9, "custom_id": "x"}]}]},
        "components.0.components.0.style",
        "BASE_TYPE_CHOICES",
    ),
    "11-attachments": Wire("send", {"attachments": [{"id": n} for n in range(11)]}, "attachments"),
    "nonce-26": Wire("send", {"content": "hi", "nonce": "x" * 26, "enforce_nonce": True}, "nonce"),
    "mention-parse-unknown": Wire(
        "send",
        {"content": "hi", "allowed_mentions": {"parse": ["all"]}},
        "allowed_mentions.parse.0",
        "BASE_TYPE_CHOICES",
    ),
    # the documented false positives of the spec (reference 2.5, pitfall 10)
    "upload-numbered-0": Wire("edit", {"content": "done", "attachments": [{"id": 0, "filename": "a.png"}]}, files=1),
    # and one more of that kind: discord.py's AllowedMentions sends ids as numbers
    "mention-user-id-as-number": Wire("send", {"content": "<@1>", "allowed_mentions": {"parse": [], "users": [1]}}),
    "mention-user-id-as-string": Wire("send", {"content": "<@1>", "allowed_mentions": {"parse": [], "users": ["1"]}}),
    "mention-user-id-as-name": Wire(
        "send",
        {"content": "hi", "allowed_mentions": {"users": ["alice"]}},
        "allowed_mentions.users.0",
        "NUMBER_TYPE_COERCE",
    ),
    "callback-with-response-1": Wire("callback", {"type": 5}, query="?with_response=1"),
    "followup-wait-1": Wire("followup", {"content": "more"}, query="?wait=1&with_components=0"),
    "permissions-as-number": Wire("commands", [command(default_member_permissions=32)]),
    "permissions-as-string": Wire("commands", [command(default_member_permissions="32")]),
    # interaction callbacks: the union of the seven request schemas
    "callback-type-3": Wire("callback", {"type": 3}, "type"),
    "callback-content-2001": Wire("callback", {"type": 4, "data": {"content": "x" * 2001}}, "data.content"),
    "modal-without-title": Wire(
        "callback", {"type": 9, "data": {"custom_id": "m", "components": []}}, "data.title", "BASE_TYPE_REQUIRED"
    ),
    "with-response-maybe": Wire("callback", {"type": 5}, "with_response", query="?with_response=maybe"),
    # command definitions
    "max-value-int53": Wire("commands", [command()]),
    "name-upper-case": Wire("commands", [command(name="Inpaint")], "0.name", "APPLICATION_COMMAND_INVALID_NAME"),
    "description-101": Wire("commands", [command(description="x" * 101)], "0.description"),
    "option-description-empty": Wire(
        "commands", [command(options=[option("a", description="")])], "0.options.0.description"
    ),
    "26-options": Wire("commands", [command(options=[option(f"o{n}") for n in range(26)])], "0.options"),
    "required-after-optional": Wire(
        "commands", [command(options=[option("a"), option("b", required=True)])], "0.options.1.required"
    ),
    "duplicate-option": Wire("commands", [command(options=[option("a"), option("a")])], "0.options.1.name"),
    "choice-value-101": Wire(
        "commands",
        [command(options=[option("a", choices=[{"name": "long", "value": "x" * 101}])])],
        "0.options.0.choices.0.value",
    ),
    "over-8000-characters": Wire("commands", [command(options=BIG_OPTIONS)], "0", "APPLICATION_COMMAND_TOO_LARGE"),
    "duplicate-command": Wire("commands", [command(), command()], "1.name"),
    # channel history: its query as the docs give it (the bot subset of the spec lacks the route)
    "history-limit-100": Wire("history", query="?limit=100"),
    "history-limit-0": Wire("history", None, "limit", "NUMBER_TYPE_MIN", query="?limit=0"),
    "history-limit-101": Wire("history", None, "limit", "NUMBER_TYPE_MAX", query="?limit=101"),
    "history-before-not-a-snowflake": Wire("history", None, "before", "NUMBER_TYPE_COERCE", query="?before=abc"),
    "history-two-anchors": Wire("history", None, "after", query="?before=1&after=2"),
}


@pytest.fixture
async def wire(aiohttp_server: Any) -> AsyncIterator[tuple[FakeDiscord, aiohttp.ClientSession]]:
    fake = await start_fake_discord(aiohttp_server)
    async with raw_bot(fake) as (http, _ws, _frames):
        yield fake, http


async def send(fake: FakeDiscord, http: aiohttp.ClientSession, case: Wire) -> tuple[aiohttp.ClientResponse, Any]:
    interaction = await fake.slash("echo")
    auth = {"Authorization": f"Bot {fake.bot_token}"}
    if case.route in NEEDS_DEFER:
        callback = f"{fake.api_base}/interactions/{interaction.id}/{interaction.token}/callback"
        async with http.post(callback, json={"type": 5}) as defer:
            assert defer.status == 204
    method, path = ROUTES[case.route](fake, interaction)
    kwargs: dict[str, Any] = {}
    if case.files:
        form = aiohttp.FormData()
        form.add_field("payload_json", json.dumps(case.body), content_type="application/json")
        for n in range(case.files):
            form.add_field(f"files[{n}]", png(), filename=f"{n}.png", content_type="image/png")
        kwargs["data"] = form
    elif case.body is not None:
        kwargs["json"] = case.body
    async with http.request(method, f"{fake.api_base}{path}{case.query}", headers=auth, **kwargs) as response:
        body = await response.json(content_type=None) if response.status != 204 else None
        return response, body


@pytest.mark.parametrize("case", DISCORD_CASES.values(), ids=DISCORD_CASES.keys())
async def test_discord_takes_or_refuses_as_its_spec_and_docs_say(
    wire: tuple[FakeDiscord, aiohttp.ClientSession], case: Wire
) -> None:
    fake, http = wire
    response, body = await send(fake, http, case)

    if case.refused_at is None:
        assert response.status in (200, 204), body
        assert fake.refused == []
        return
    assert response.status == 400 and response.headers["Content-Type"] == "application/json"
    assert (body["code"], body["message"]) == (50035, "Invalid Form Body")
    problems = errors_at(body, case.refused_at)
    if case.code is not None:
        assert [p["code"] for p in problems] == [case.code], problems
    [refused] = fake.refused
    assert refused.error == body and refused.path == response.url.path


async def test_a_refused_callback_leaves_the_interaction_unanswered(
    wire: tuple[FakeDiscord, aiohttp.ClientSession],
) -> None:
    fake, http = wire
    interaction = await fake.slash("echo")
    callback = f"{fake.api_base}/interactions/{interaction.id}/{interaction.token}/callback?with_response=1"
    async with http.post(callback, json={"type": 4, "data": {"content": "x" * 2001}}) as refused:
        assert refused.status == 400
    async with http.post(callback, json={"type": 4, "data": {"content": "fits"}}) as answered:
        assert answered.status == 200
    assert [(cb.type, cb.status) for cb in interaction.callbacks] == [(4, 400), (4, 200)]
    original = interaction.original()
    assert original is not None and original.content == "fits"


def test_context_menu_commands_take_spaces_and_capitals_but_no_description() -> None:
    menu = {"type": 3, "name": "Repaint This"}  # MESSAGE: what the message's menu shows
    assert command_problems([command(options=[option("a", required=True), option("b")]), menu]) == []
    [(where, _, _)] = command_problems([menu | {"description": "Repaint"}])
    assert where == [0, "description"]


# fal: the published input schema of the endpoint

MINIMAL = {"prompt": "a red hat", "image_url": "https://example.com/a.png", "mask_url": "https://example.com/m.png"}
FAL_CASES: dict[str, tuple[dict[str, Any], list[tuple[list[Any], str, str]]]] = {
    "minimal": (MINIMAL, []),
    "every-option": (
        MINIMAL
        | {"strength": 0.01, "num_inference_steps": 50, "guidance_scale": 35, "num_images": 4, "seed": 2**53}
        | {"output_format": "png", "enable_safety_checker": False, "loras": [{"path": "x", "scale": 4}]}
        | {"acceleration": "regular", "image_size": {"width": 512, "height": 512}, "sync_mode": False},
        [],
    ),
    "seed-null": (MINIMAL | {"seed": None}, []),
    "strength-over-1": (
        MINIMAL | {"strength": 1.5},
        [(["body", "strength"], "less_than_equal", "Input should be less than or equal to 1")],
    ),
    "no-mask": (
        {k: v for k, v in MINIMAL.items() if k != "mask_url"},
        [(["body", "mask_url"], "missing", "Field required")],
    ),
    "gif": (
        MINIMAL | {"output_format": "gif"},
        [(["body", "output_format"], "literal_error", "Input should be 'jpeg' or 'png'")],
    ),
    "steps-fractional": (
        MINIMAL | {"num_inference_steps": 2.5},
        [
            (
                ["body", "num_inference_steps"],
                "int_from_float",
                "Input should be a valid integer, got a number with a fractional part",
            )
        ],
    ),
    "seed-text": (
        MINIMAL | {"seed": "x"},
        [(["body", "seed"], "int_parsing", "Input should be a valid integer, unable to parse string as an integer")],
    ),
    "lora-without-path": (
        MINIMAL | {"loras": [{"scale": 1}]},
        [(["body", "loras", 0, "path"], "missing", "Field required")],
    ),
    "size-zero": (
        MINIMAL | {"image_size": {"width": 0, "height": 512}},
        [(["body", "image_size", "width"], "greater_than", "Input should be greater than 0")],
    ),
    "not-an-object": (
        [MINIMAL],
        [(["body"], "model_attributes_type", "Input should be a valid dictionary or object to extract fields from")],
    ),  # type: ignore[dict-item]
}


@pytest.fixture
async def fal(aiohttp_server: Any) -> FakeFal:
    return await start_fake_fal(aiohttp_server)


@pytest.mark.parametrize(("body", "expected"), FAL_CASES.values(), ids=FAL_CASES.keys())
async def test_fal_takes_or_refuses_as_its_input_schema_says(
    fal: FakeFal, body: Any, expected: list[tuple[list[Any], str, str]]
) -> None:
    auth = {"Authorization": f"Key {fal.key}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{fal.base_url}/fal-ai/flux-lora/inpainting", json=body, headers=auth) as response,
    ):
        answer = await response.json()

    if not expected:
        assert response.status == 200 and answer["status"] == "IN_QUEUE" and fal.refused == []
        return
    assert response.status == 422
    assert [(d["loc"], d["type"], d["msg"]) for d in answer["detail"]] == expected
    [refused] = fal.refused
    assert (refused.endpoint, refused.body, refused.detail) == ("fal-ai/flux-lora/inpainting", body, answer["detail"])
    assert fal.jobs == {}


async def test_fal_reports_problems_in_its_model_s_field_order(fal: FakeFal) -> None:
    body = {"mask_url": "m", "strength": 2, "num_images": 9}  # no prompt, no image_url
    auth = {"Authorization": f"Key {fal.key}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{fal.base_url}/fal-ai/flux-lora/inpainting", json=body, headers=auth) as response,
    ):
        detail = (await response.json())["detail"]
    assert [d["loc"][1] for d in detail] == ["prompt", "num_images", "image_url", "strength"]


async def test_fal_endpoints_without_a_schema_are_not_served(fal: FakeFal) -> None:
    auth = {"Authorization": f"Key {fal.key}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{fal.base_url}/fal-ai/flux-lora", json=MINIMAL, headers=auth) as response,
    ):
        assert response.status == 404
    assert fal.jobs == {} and fal.refused == []
