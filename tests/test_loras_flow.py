"""LoRAs and styles through Discord (SPEC 9): what the member sees, and what fal receives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.config import LoraEntry, Settings, StyleEntry
from bot.library import LoraLibrary
from bot.loras import LoraError
from bot.models import InpaintOptions
from bot.store import JobStore
from tests.conftest import MakeRig
from tests.fakes.discord import FakeInteraction, FakeMessage, InvocationError
from tests.rig import BotRig, visible_text
from tests.test_flow import COFFEE, COFFEE_MASK, answer_to

EPHEMERAL = 64
AUTOCOMPLETE_RESULT = 8
HF = "https://huggingface.co/fluxpaint"
PIXEL = f"{HF}/pixel-art/resolve/main/pixel.safetensors"
WATER = f"{HF}/watercolor/resolve/main/water.safetensors"
INK = f"{HF}/ink/resolve/main/ink.safetensors"
GLOW = f"{HF}/glow/resolve/main/glow.safetensors"
RAW = "https://v3.fal.media/files/koala/trained.safetensors"

OWNER_LORAS: list[dict[str, Any]] = [
    {
        "name": "pixel-art",
        "path": PIXEL,
        "scale": 0.8,
        "trigger_words": ["pixel art"],
        "description": "Crisp 16-bit sprites",
    },
    {"name": "watercolor", "path": WATER, "trigger_words": ["wtrclr"], "description": "Soft washes on paper"},
    {"name": "ink", "path": INK, "scale": 1.2, "description": "Bold pen strokes"},
    {"name": "glow", "path": GLOW, "description": "Neon light"},
]
OWNER_STYLES: list[dict[str, Any]] = [
    {
        "name": "retro-game",
        "description": "An 8-bit game screen",
        "prompt": "{prompt}, retro game screenshot",
        "loras": [{"name": "pixel-art", "scale": 1.5}],
        "strength": 0.6,
        "num_inference_steps": 20,
    },
]


async def lora_rig(make_rig: MakeRig, **sections: Any) -> BotRig:
    sections.setdefault("loras", OWNER_LORAS)
    sections.setdefault("styles", OWNER_STYLES)
    return await make_rig(**sections)


async def finished(rig: BotRig, interaction: FakeInteraction) -> tuple[dict[str, Any], str]:
    """fal's submit body for the one job, and what the member's result shows."""
    reply = await rig.wait_text(interaction, "Inpainted")
    assert rig.fal.refused == []
    (body,) = rig.fal.submits
    return body, visible_text(reply)


def sent_loras(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(lora["path"], lora["scale"]) for lora in body["loras"]]


async def private_refusal(rig: BotRig, interaction: FakeInteraction) -> str:
    """A refusal answered at once and privately (callback type 4, ephemeral): nothing public, nothing sent to fal."""
    await rig.discord.wait_for(lambda: bool(interaction.callbacks))
    (callback,) = interaction.callbacks
    assert callback.type == 4 and callback.data.get("flags", 0) & EPHEMERAL, callback
    assert rig.fal.submits == []
    return str(callback.data["content"])


async def group_slash(rig: BotRig, name: str, *, user: str = "admin", options: dict[str, Any]) -> FakeInteraction:
    """``/fluxpaint lora add`` and the like: a subcommand of a subcommand group, sent as Discord sends it."""
    return await rig.discord.slash(name, user=user, options=options)


async def admin(rig: BotRig, sub: str, user: str = "admin", **options: object) -> str:
    return await answer_to(rig, await group_slash(rig, f"fluxpaint {sub}", user=user, options=dict(options)))


async def suggestions(rig: BotRig, focused: str, value: str, **options: Any) -> list[dict[str, Any]]:
    interaction = await rig.discord.autocomplete("inpaint", focused=focused, value=value, options=options)
    await rig.discord.wait_for(lambda: interaction.choices is not None)
    answer = next(cb for cb in interaction.callbacks if cb.status == 200)
    assert answer.type == AUTOCOMPLETE_RESULT
    assert interaction.choices is not None
    assert len(interaction.choices) <= 25
    assert all(len(choice["name"]) <= 100 and len(choice["value"]) <= 100 for choice in interaction.choices)
    return interaction.choices


# 1. the payload


async def test_lora_and_lora2_reach_fal_in_order_with_their_scales_and_trigger_words(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig)
    interaction = await rig.inpaint(
        COFFEE, COFFEE_MASK, prompt="a cat on a mug", lora="pixel-art", lora2="watercolor", lora2_scale=0.4
    )
    body, shown = await finished(rig, interaction)
    assert sent_loras(body) == [(PIXEL, 0.8), (WATER, 0.4)]
    assert body["prompt"] == "pixel art, wtrclr, a cat on a mug"
    assert "LoRAs: pixel-art × 0.8\nwatercolor × 0.4" in shown
    assert "pixel art, wtrclr, a cat on a mug" in shown  # the prompt fal received


async def test_a_trigger_word_already_in_the_prompt_is_not_added_again(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig)
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="PIXEL ART of a cat", lora="pixel-art", lora_scale=2)
    body, _ = await finished(rig, interaction)
    assert body["prompt"] == "PIXEL ART of a cat"
    assert sent_loras(body) == [(PIXEL, 2)]


async def test_no_loras_key_when_none_is_chosen(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig)
    body, shown = await finished(rig, await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a red hat"))
    assert "loras" not in body and body["prompt"] == "a red hat"
    assert "LoRAs:" not in shown and "Style:" not in shown


# 2. autocomplete


async def test_lora_autocomplete_matches_anywhere_and_shows_descriptions(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig)
    by_name = await suggestions(rig, "lora", "pix")
    assert by_name == [{"name": "pixel-art: Crisp 16-bit sprites", "value": "pixel-art"}]
    by_description = await suggestions(rig, "lora2", "PAPER", prompt="x")  # in the middle of a description, any case
    assert [c["value"] for c in by_description] == ["watercolor"]
    inside_name = await suggestions(rig, "lora", "low")  # "glow": typed text inside the name
    assert [c["value"] for c in inside_name] == ["glow"]
    everything = await suggestions(rig, "lora", "")
    assert [c["value"] for c in everything] == ["pixel-art", "watercolor", "ink", "glow"]


async def test_style_autocomplete(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig)
    assert await suggestions(rig, "style", "8-bit") == [
        {"name": "retro-game: An 8-bit game screen", "value": "retro-game"}
    ]
    assert await suggestions(rig, "style", "nothing like it") == []


async def test_autocomplete_caps_at_25_and_cuts_long_descriptions(make_rig: MakeRig) -> None:
    many = [
        {"name": f"lora-{i:03}", "path": f"{HF}/many/resolve/main/{i}.safetensors", "description": "x" * 100}
        for i in range(60)
    ]
    rig = await lora_rig(make_rig, loras=many, styles=[])
    choices = await suggestions(rig, "lora", "lora")
    assert [c["value"] for c in choices] == [f"lora-{i:03}" for i in range(25)]
    assert all(c["name"].startswith(f"{c['value']}: xxx") and c["name"].endswith("…") for c in choices)


async def test_autocomplete_answers_fast_over_500_entries(make_rig: MakeRig) -> None:
    many = [
        {"name": f"lora-{i:03}", "path": f"{HF}/many/resolve/main/{i}.safetensors", "description": f"entry {i}"}
        for i in range(500)
    ]
    rig = await lora_rig(make_rig, loras=many, styles=[])
    latencies: list[float] = []
    for typed in ("", "lora-4", "entry 49", "zzz", "LORA-49") * 20:
        latencies.append(await autocomplete_latency(rig, typed))
    p99 = sorted(latencies)[98]
    print(f"autocomplete over 500 entries: p50 {sorted(latencies)[49] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert p99 < 0.5, latencies  # generous for a loaded CI machine (the target here is 50 ms); Discord allows 3 s


async def autocomplete_latency(rig: BotRig, typed: str) -> float:
    interaction = await rig.discord.autocomplete("inpaint", focused="lora", value=typed)
    await rig.discord.wait_for(lambda: interaction.choices is not None)
    assert interaction.response_latency_s is not None
    return interaction.response_latency_s


# 3. refusals before anything is public or sent


@pytest.mark.parametrize(
    ("sections", "options", "expected"),
    [
        pytest.param({}, {"lora": "oil-paint"}, "`oil-paint` is not a LoRA here; see /loras", id="unknown-lora"),
        pytest.param({}, {"style": "noir"}, "`noir` is not a style here; see /loras", id="unknown-style"),
        pytest.param({}, {"lora": "ink", "lora2": "ink"}, "`ink` twice", id="same-lora-twice"),
        pytest.param(
            {},
            {"style": "retro-game", "lora": "pixel-art", "lora2": "pixel-art"},
            "`pixel-art` twice",
            id="twice-with-the-style",
        ),
        pytest.param(
            {"limits": {"max_loras": 2}},
            {"style": "retro-game", "lora": "ink", "lora2": "glow"},
            "would use 3 LoRAs (the style brings 1); at most 2",
            id="too-many",
        ),
        pytest.param({}, {"lora": RAW}, "chosen by name here, not by link", id="url-not-allowed"),
        pytest.param(
            {"catalog": {"allow_urls": True}},
            {"lora": "https://evil.example.com/x.safetensors"},
            "evil.example.com is not one of them",
            id="url-host-not-allowed",
        ),
        pytest.param(
            {"catalog": {"allow_urls": True}},
            {"lora": "http://huggingface.co/x.safetensors"},
            "https://",
            id="url-not-https",
        ),
        pytest.param(
            {"catalog": {"allow_urls": True}},
            {"lora": "pixel-art", "lora2": PIXEL.replace("huggingface.co", "HuggingFace.co") + "/?download=1"},
            "`pixel-art` twice",
            id="same-file-by-another-link",
        ),
        pytest.param({}, {"lora_scale": 1.0}, "lora_scale was given without lora", id="scale-without-lora"),
    ],
)
async def test_refused_privately_before_anything_is_sent(
    make_rig: MakeRig, sections: dict[str, Any], options: dict[str, Any], expected: str
) -> None:
    rig = await lora_rig(make_rig, **sections)
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, **options)
    text = await private_refusal(rig, interaction)
    assert expected in text, text
    assert [m for m in rig.discord.messages_in("general") if not m.ephemeral] == []  # nothing public


async def test_an_allowed_link_works_when_the_owner_allows_links(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig, catalog={"allow_urls": True})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a cat", lora=RAW, lora_scale=0.5, lora2="ink")
    body, shown = await finished(rig, interaction)
    assert sent_loras(body) == [(RAW, 0.5), (INK, 1.2)]
    assert body["prompt"] == "a cat"
    assert f"{RAW} × 0.5" in shown


# 4. styles


async def test_a_style_brings_its_template_loras_and_defaults(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig)
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a knight", style="retro-game", lora="ink")
    body, shown = await finished(rig, interaction)
    assert body["prompt"] == "pixel art, a knight, retro game screenshot"
    assert sent_loras(body) == [(PIXEL, 1.5), (INK, 1.2)]  # the style's LoRAs first
    assert body["strength"] == 0.6 and body["num_inference_steps"] == 20
    assert body["guidance_scale"] == 3.5  # the style sets none: the command's default
    assert "pixel art, a knight, retro game screenshot" in shown and "LoRAs: pixel-art × 1.5\nink × 1.2" in shown
    assert "Style: retro-game" in shown and "Strength: 0.6" in shown and "Steps: 20" in shown


async def test_the_members_options_win_over_the_styles_defaults(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig)
    interaction = await rig.inpaint(
        COFFEE,
        COFFEE_MASK,
        prompt="a knight",
        style="retro-game",
        strength=0.85,  # the command's default, typed: still the member's choice
        num_inference_steps=40,
        lora="pixel-art",
        lora_scale=0.3,
    )
    body, shown = await finished(rig, interaction)
    assert body["strength"] == 0.85 and body["num_inference_steps"] == 40
    assert sent_loras(body) == [(PIXEL, 0.3)]  # the member's scale of the style's LoRA, sent once
    assert "pixel-art × 0.3" in shown


# 5. admins


async def test_admin_adds_a_lora_members_then_use_and_autocomplete(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig, loras=[], styles=[])
    text = await admin(
        rig,
        "lora add",
        name="koala",
        path=RAW,
        scale=0.7,
        trigger_words="kwala, fuzzy",
        description="Our mascot",
    )
    assert "Added the LoRA **koala** (scale 0.7)" in text
    assert await suggestions(rig, "lora", "masc") == [{"name": "koala: Our mascot", "value": "koala"}]
    body, shown = await finished(rig, await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a koala", lora="Koala"))
    assert sent_loras(body) == [(RAW, 0.7)] and body["prompt"] == "kwala, fuzzy, a koala"
    assert "koala × 0.7" in shown

    assert "Removed the LoRA **koala**" in await admin(rig, "lora remove", name="koala")
    assert await suggestions(rig, "lora", "") == []
    refused = await rig.inpaint(COFFEE, COFFEE_MASK, lora="koala")
    await rig.discord.wait_for(lambda: bool(refused.callbacks))
    assert "not a LoRA here" in refused.callbacks[0].data["content"] and len(rig.fal.submits) == 1


async def test_admin_style_add_and_remove_and_a_used_lora_stays(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig, loras=[], styles=[])
    await admin(rig, "lora add", name="koala", path=RAW)
    text = await admin(
        rig,
        "style add",
        name="mascot",
        prompt="{prompt}, as our mascot",
        loras="koala:0.9",
        strength=0.5,
        description="The koala look",
    )
    assert "Added the style **mascot**" in text
    assert [c["value"] for c in await suggestions(rig, "style", "koala")] == ["mascot"]
    assert "mascot use koala; remove them first" in await admin(rig, "lora remove", name="koala")
    body, shown = await finished(rig, await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a hat", style="mascot"))
    assert sent_loras(body) == [(RAW, 0.9)] and body["prompt"] == "a hat, as our mascot" and body["strength"] == 0.5
    assert "Style: mascot" in shown

    assert "Removed the style **mascot**" in await admin(rig, "style remove", name="mascot")
    assert "Removed the LoRA **koala**" in await admin(rig, "lora remove", name="koala")


async def test_admin_changes_are_in_the_admin_log(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig, loras=[], styles=[])
    await admin(rig, "lora add", name="koala", path=RAW)
    await admin(rig, "style add", name="mascot", loras="koala")
    await admin(rig, "style remove", name="mascot")
    await admin(rig, "lora remove", name="koala")
    limits = await answer_to(rig, await rig.discord.slash("fluxpaint limits", user="admin"))
    _, found, log = limits.partition("Recent admin changes:\n")
    assert found, limits
    actor = f"<@{rig.discord.user_id('admin')}>"
    assert [line.split("> ", 1)[1] for line in log.splitlines()][:4] == [
        f"{actor} lora remove: koala",
        f"{actor} style remove: mascot",
        f"{actor} style add: mascot",
        f"{actor} lora add: koala",
    ]


async def test_a_server_lora_with_an_owner_loras_file_is_the_same_lora(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig)
    await admin(rig, "lora add", name="my-ink", path=INK, scale=0.5)
    text = await private_refusal(rig, await rig.inpaint(COFFEE, COFFEE_MASK, lora="ink", lora2="my-ink"))
    assert "the same LoRA twice" in text, text


@pytest.mark.parametrize(
    ("sub", "options", "expected"),
    [
        pytest.param("lora add", {"name": "x", "path": "http://huggingface.co/a.safetensors"}, "https", id="http"),
        pytest.param(
            "lora add",
            {"name": "x", "path": "https://evil.example.com/a.safetensors"},
            "evil.example.com is not one of them",
            id="host",
        ),
        pytest.param("lora add", {"name": "Bad Name!", "path": RAW}, "name", id="bad-name"),
        pytest.param("lora add", {"name": "pixel-art", "path": RAW}, "of the bot's owner", id="owners-name"),
        pytest.param("lora remove", {"name": "pixel-art"}, "only its owner can remove it", id="owners-lora"),
        pytest.param("lora remove", {"name": "nope"}, "no LoRA named nope", id="unknown"),
        pytest.param("style add", {"name": "s", "loras": "oil-paint"}, "not a LoRA here", id="style-unknown-lora"),
        pytest.param("style add", {"name": "s", "prompt": "no placeholder"}, "{prompt}", id="style-no-template"),
    ],
)
async def test_admin_refusals_are_clear_and_private(
    make_rig: MakeRig, sub: str, options: dict[str, Any], expected: str
) -> None:
    rig = await lora_rig(make_rig)
    text = await admin(rig, sub, **options)
    assert expected in text, text
    owners = ["pixel-art", "watercolor", "ink", "glow"]
    assert [c["value"] for c in await suggestions(rig, "lora", "")] == owners  # nothing added, nothing removed
    assert [c["value"] for c in await suggestions(rig, "style", "")] == ["retro-game"]


async def test_lora_and_style_admin_commands_need_manage_server(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig)
    for sub, options in (
        ("lora add", {"name": "koala", "path": RAW}),
        ("lora remove", {"name": "ink"}),
        ("style add", {"name": "mascot"}),
        ("style remove", {"name": "retro-game"}),
    ):
        with pytest.raises(InvocationError, match="default_member_permissions"):
            await group_slash(rig, f"fluxpaint {sub}", user="alice", options=options)


async def test_server_entries_are_invisible_in_another_server(tmp_path: Path) -> None:
    settings = Settings(
        discord={"token": "t"},
        fal={"key": "k"},
        storage={"data_dir": str(tmp_path)},
        loras=OWNER_LORAS[:1],
    )
    async with await JobStore.open(tmp_path / "jobs.sqlite3") as store:
        library = LoraLibrary(settings, store)
        one, two = 111, 222
        await library.catalog(two)  # cached before the change: another server's cache must not go stale wrongly
        await library.add_lora(one, by=1, name="koala", path=RAW, scale=1, trigger_words="", description="mascot")
        await library.add_style(
            one,
            by=1,
            name="mascot",
            prompt="{prompt}",
            description="",
            lora_names="koala",
            strength=None,
            num_inference_steps=None,
            guidance_scale=None,
        )
        assert [c.value for c in await library.suggest(one, "", "lora")] == ["pixel-art", "koala"]
        assert [c.value for c in await library.suggest(two, "", "lora")] == ["pixel-art"]
        assert await library.suggest(two, "", "style") == []
        with pytest.raises(LoraError, match="not a LoRA here"):
            await library.resolve(InpaintOptions(prompt="x", lora="koala"), two, frozenset({"prompt", "lora"}))
        with pytest.raises(LoraError, match="no LoRA named koala"):
            await library.remove(two, "lora", "koala", by=2)
        # the same name in the other server is that server's own
        await library.add_lora(two, by=2, name="koala", path=INK, scale=1, trigger_words="", description="")
        resolved = await library.resolve(InpaintOptions(prompt="x", lora="koala"), two, frozenset({"prompt", "lora"}))
        assert [w.path for w in resolved.loras] == [INK]

        fresh = LoraLibrary(settings, store)  # after a restart: read back from the store
        assert [e.name for e in (await fresh.catalog(one)).loras] == ["pixel-art", "koala"]
        assert [e.path for e in (await fresh.catalog(two)).loras] == [PIXEL, INK]
        assert [s.name for s in (await fresh.catalog(one)).styles] == ["mascot"]
        assert isinstance((await fresh.catalog(one)).styles[0], StyleEntry)
        assert isinstance((await fresh.catalog(two)).loras[1], LoraEntry)


# 6. /loras


async def test_loras_lists_styles_and_loras_privately(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig)
    interaction = await rig.discord.slash("loras")
    text = await answer_to(rig, interaction)
    lines = text.splitlines()
    assert lines[0].startswith("🎨 **retro-game**: An 8-bit game screen") and "pixel-art × 1.5" in lines[0]
    assert "🧩 **pixel-art** × 0.8: Crisp 16-bit sprites · trigger: pixel art" in lines
    assert any(line.startswith("🧩 **glow**") for line in lines)
    assert [m for m in rig.discord.messages_in("general") if not m.ephemeral] == []


async def test_loras_says_when_there_is_nothing_yet(make_rig: MakeRig) -> None:
    rig = await make_rig()
    text = await answer_to(rig, await rig.discord.slash("loras"))
    assert "No LoRAs or styles are set up here yet" in text and "/fluxpaint lora add" in text


async def test_loras_pages_a_long_list(make_rig: MakeRig) -> None:
    many = [
        {"name": f"lora-{i:03}", "path": f"{HF}/many/resolve/main/{i}.safetensors", "description": "y" * 90}
        for i in range(60)
    ]
    rig = await lora_rig(make_rig, loras=many, styles=[])
    interaction = await rig.discord.slash("loras")
    first = await answer_to(rig, interaction)
    total = int(first.rsplit("/", 1)[1])

    def pages_shown() -> list[FakeMessage]:
        return [m for m in [interaction.original(), *interaction.followups()] if m is not None]

    await rig.discord.wait_for(lambda: len(pages_shown()) == total)
    pages = pages_shown()
    assert len(pages) >= 2 and all(m.ephemeral and len(m.content) <= 2000 for m in pages)
    assert pages[-1].content.endswith(f"page {len(pages)}/{len(pages)}")
    shown = "\n".join(m.content for m in pages)
    assert all(f"**lora-{i:03}**" in shown for i in range(60))


# 7. fal cannot load a LoRA


async def test_fal_failing_on_a_lora_names_it(make_rig: MakeRig) -> None:
    rig = await lora_rig(make_rig, fal={"fail_with": "Could not load LoRA weights from (a link)"})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, lora="watercolor")
    reply = await rig.wait_text(interaction, "❌")
    assert "fal could not use the LoRA watercolor." in visible_text(reply)


async def test_a_server_lora_on_a_host_the_owner_no_longer_allows_is_not_sent(tmp_path: Path) -> None:
    def settings(hosts: list[str]) -> Settings:
        return Settings(
            discord={"token": "t"},
            fal={"key": "k"},
            storage={"data_dir": str(tmp_path)},
            catalog={"allowed_hosts": hosts},
        )

    async with await JobStore.open(tmp_path / "jobs.sqlite3") as store:
        before = LoraLibrary(settings(["huggingface.co", "civitai.com"]), store)
        await before.add_lora(
            111,
            by=1,
            name="koala",
            path="https://civitai.com/api/download/models/9",
            scale=1.0,
            trigger_words="",
            description="",
        )
        after = LoraLibrary(settings(["huggingface.co"]), store)  # the owner took civitai.com off the list
        assert (await after.catalog(111)).lora("koala") is None
        with pytest.raises(LoraError, match="koala"):
            await after.resolve(InpaintOptions(prompt="a cat", lora="koala"), 111, frozenset({"prompt", "lora"}))


async def test_a_style_template_with_a_blocked_term_is_refused_privately(make_rig: MakeRig) -> None:
    styles = [{"name": "edgy", "prompt": "{prompt}, forbidden-thing", "description": "x"}]
    rig = await lora_rig(make_rig, styles=styles, safety={"blocked_terms": ["forbidden-thing"]})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a cat", style="edgy")
    text = await private_refusal(rig, interaction)
    assert "isn't allowed on this server" in text and rig.fal.submits == []


async def test_a_prompt_the_style_makes_too_long_is_refused_privately(make_rig: MakeRig) -> None:
    styles = [{"name": "wordy", "prompt": "{prompt}, " + "very " * 40 + "detailed", "description": "x"}]
    rig = await lora_rig(make_rig, styles=styles, limits={"max_prompt_chars": 100})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a cat", style="wordy")
    text = await private_refusal(rig, interaction)
    assert "the limit here is 100" in text and rig.fal.submits == []
