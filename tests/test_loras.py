"""The LoRA catalog: autocomplete, resolving a job's style and LoRAs, and the checks on entries admins add."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bot.config import CatalogSettings, LoraEntry, StyleEntry
from bot.errors import InputError
from bot.fal_models import LoraWeight
from bot.loras import Catalog, Choice, LoraError, Resolved, check_server_lora, check_server_style, resolve, suggest
from bot.models import InpaintOptions

HF = "https://huggingface.co/fluxpaint/loras/resolve/main"
PIXEL = f"{HF}/pixel.safetensors"
WATER = "https://civitai.com/api/download/models/111"
INK = "https://v3.fal.media/files/ink.safetensors"
SETTINGS = CatalogSettings()
URLS_ON = CatalogSettings(allow_urls=True)
ALLOWED = "huggingface.co, civitai.com, fal.media, v3.fal.media, storage.googleapis.com"


def lora(name: str, path: str | None = None, **fields: Any) -> LoraEntry:
    return LoraEntry(name=name, path=path or f"{HF}/{name}.safetensors", **fields)


OWNER_LORAS = [
    lora("pixel-art", PIXEL, scale=0.9, trigger_words=["pixel art"], description="8-bit sprites and tiles"),
    lora("watercolor", WATER, trigger_words=["wtrclr", "soft wash"], description="Soft paper washes"),
    lora("ink", INK, scale=1.2, description="Bold pixel-perfect ink lines"),
    lora("art-deco", description="1920s posters"),
]
OWNER_STYLES = [
    StyleEntry(
        name="retro",
        description="A 1990s console game",
        prompt="{prompt}, retro video game screenshot",
        loras=[{"name": "pixel-art", "scale": 0.7}, "ink"],
        strength=0.6,
        num_inference_steps=30,
        guidance_scale=5.0,
    ),
    StyleEntry(name="plain", description="No LoRA, a longer prompt", prompt="masterpiece, {prompt}"),
]
OWNER = Catalog(OWNER_LORAS, OWNER_STYLES)


def values(choices: list[Choice]) -> list[str]:
    return [choice.value for choice in choices]


def run(
    catalog: Catalog = OWNER, *, settings: CatalogSettings = SETTINGS, max_loras: int = 4, **options: Any
) -> Resolved:
    """Resolve ``options`` as a member gave them: each one passed counts as given."""
    return resolve(
        InpaintOptions(**({"prompt": "a cat"} | options)),
        catalog,
        given=frozenset({"prompt", *options}),
        catalog_settings=settings,
        max_loras=max_loras,
    )


# autocomplete


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("", ["pixel-art", "watercolor", "ink", "art-deco"]),
        ("pix", ["pixel-art", "ink"]),  # ink's description says pixel-perfect: after the name prefix
        ("ART", ["art-deco", "pixel-art"]),  # any case; the name prefix first, then anywhere in the name
        ("  soft ", ["watercolor"]),  # in the description only
        ("paper wash", ["watercolor"]),
        ("sprites", ["pixel-art"]),
        ("tiles soft", []),  # never across the name and description
        ("zzz", []),
    ],
    ids=[
        "empty-lists-all",
        "prefix-then-description",
        "any-case-prefix-first",
        "description",
        "words",
        "one-word",
        "no-straddle",
        "no-match",
    ],
)
def test_suggest_matches_anywhere_with_name_prefixes_first(typed: str, expected: list[str]) -> None:
    assert values(suggest(OWNER, typed, kind="lora")) == expected


def test_suggest_shows_name_and_description() -> None:
    assert suggest(OWNER, "deco", kind="lora") == [Choice(name="art-deco: 1920s posters", value="art-deco")]
    assert suggest(OWNER, "", kind="style") == [
        Choice(name="retro: A 1990s console game", value="retro"),
        Choice(name="plain: No LoRA, a longer prompt", value="plain"),
    ]
    bare = Catalog([lora("bare")])
    assert suggest(bare, "", kind="lora") == [Choice(name="bare", value="bare")]


def test_suggest_cuts_names_to_discords_100_characters() -> None:
    catalog = Catalog([lora("x" * 32, description="d" * 100), lora("short", description="fits")])
    choices = suggest(catalog, "", kind="lora")
    assert [len(choice.name) for choice in choices] == [100, len("short: fits")]
    assert choices[0].name.endswith("d…") and choices[0].value == "x" * 32


def big_catalog(n: int = 500) -> Catalog:
    # the name prefix "zz" matches only the last entries; every description holds "zz" somewhere
    entries = [lora(f"lora-{i:03}", description=f"style number {i} with zz inside") for i in range(n - 30)]
    entries += [lora(f"zz-{i:02}", description="late but a prefix") for i in range(30)]
    return Catalog(entries)


@pytest.mark.parametrize(
    ("typed", "limit", "expected"),
    [
        ("", 25, [f"lora-{i:03}" for i in range(25)]),
        ("zz", 25, [f"zz-{i:02}" for i in range(25)]),  # prefixes first even when they come last
        ("lora-4", 25, [f"lora-4{i:02}" for i in range(25)]),
        ("number 1", 3, ["lora-001", "lora-010", "lora-011"]),
        ("zz", 40, [f"zz-{i:02}" for i in range(30)] + [f"lora-{i:03}" for i in range(10)]),
    ],
    ids=["first-25", "prefixes-first", "prefix-cap", "limit", "prefixes-then-rest"],
)
def test_suggest_caps_at_the_limit_in_catalog_order(typed: str, limit: int, expected: list[str]) -> None:
    assert values(suggest(big_catalog(), typed, kind="lora", limit=limit)) == expected


def test_suggest_over_500_entries_is_fast() -> None:
    catalog = big_catalog()
    start = time.perf_counter()
    for typed in ("", "z", "zz", "lora-4", "number 49", "nothing like it") * 50:
        suggest(catalog, typed, kind="lora")
    per_call_s = (time.perf_counter() - start) / 300
    assert per_call_s < 0.005, per_call_s  # generous: a call takes under 0.1 ms on the development machine


def test_server_entries_are_seen_only_in_their_own_server() -> None:
    ours = OWNER.for_server([lora("guild-mascot", description="our pixel mascot")], [StyleEntry(name="house")])
    theirs = OWNER.for_server([lora("other-mascot")], [])
    assert values(suggest(ours, "mascot", kind="lora")) == ["guild-mascot"]
    assert values(suggest(theirs, "mascot", kind="lora")) == ["other-mascot"]
    assert values(suggest(ours, "pix", kind="lora")) == ["pixel-art", "ink", "guild-mascot"]  # the owner's first
    assert values(suggest(ours, "", kind="style")) == ["retro", "plain", "house"]
    assert values(suggest(theirs, "", kind="style")) == ["retro", "plain"]
    assert values(suggest(OWNER, "mascot", kind="lora")) == []
    assert theirs.lora("guild-mascot") is None and ours.lora("Guild-Mascot ") is not None
    with pytest.raises(LoraError, match="`guild-mascot` is not a LoRA here"):
        run(theirs, lora="guild-mascot")


def test_server_entries_never_shadow_the_owners() -> None:
    clash = lora("pixel-art", f"{HF}/impostor.safetensors", description="impostor")
    catalog = OWNER.for_server(
        [clash, lora("mine"), lora("mine", f"{HF}/second.safetensors")], [StyleEntry(name="retro")]
    )
    assert catalog.lora("pixel-art") == OWNER_LORAS[0]
    assert [entry.name for entry in catalog.loras] == ["pixel-art", "watercolor", "ink", "art-deco", "mine"]
    assert catalog.lora("mine") is not None and catalog.lora("mine").path.endswith("/mine.safetensors")  # type: ignore[union-attr]
    assert catalog.hidden == ("lora pixel-art", "lora mine", "style retro")
    assert catalog.style("retro") == OWNER_STYLES[0]
    assert values(suggest(catalog, "impostor", kind="lora")) == []


def test_owner_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Catalog([lora("a"), lora("a", f"{HF}/b.safetensors")])


def test_styles_using_a_lora() -> None:
    catalog = OWNER.for_server([], [StyleEntry(name="mine", loras=["ink"])])
    assert catalog.styles_using("ink") == ["retro", "mine"]
    assert catalog.styles_using("watercolor") == []


# resolve


def test_no_style_and_no_lora_changes_nothing() -> None:
    resolved = run(strength=0.5)
    assert (resolved.prompt, resolved.loras, resolved.style, resolved.described) == ("a cat", [], None, [])
    assert resolved.options == InpaintOptions(prompt="a cat", strength=0.5)


def test_loras_go_style_first_then_lora_then_lora2() -> None:
    resolved = run(style="retro", lora="watercolor", lora2="art-deco")
    assert [weight.path for weight in resolved.loras] == [PIXEL, INK, WATER, f"{HF}/art-deco.safetensors"]
    assert resolved.described == ["pixel-art × 0.7", "ink × 1.2", "watercolor × 1", "art-deco × 1"]
    assert resolved.style == "retro"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"lora": "pixel-art"}, [(PIXEL, 0.9)]),  # the entry's
        ({"lora": "pixel-art", "lora_scale": 0.0}, [(PIXEL, 0.0)]),  # the member's, even 0
        ({"lora2": "ink", "lora2_scale": 3.5}, [(INK, 3.5)]),
        ({"style": "retro"}, [(PIXEL, 0.7), (INK, 1.2)]),  # the style's, else the entry's
        ({"style": "retro", "lora": "pixel-art", "lora_scale": 2.0}, [(PIXEL, 2.0), (INK, 1.2)]),  # member over style
        ({"style": "retro", "lora": "Pixel-Art"}, [(PIXEL, 0.7), (INK, 1.2)]),  # picked again without a scale
        (
            {"style": "retro", "lora": "ink", "lora_scale": 0.3, "lora2": "watercolor"},
            [(PIXEL, 0.7), (INK, 0.3), (WATER, 1.0)],
        ),
    ],
    ids=[
        "entry",
        "member-zero",
        "lora2-member",
        "style-then-entry",
        "member-over-style",
        "style-lora-picked-again",
        "style-lora-rescaled-keeps-place",
    ],
)
def test_scales_member_then_style_then_entry(options: dict[str, Any], expected: list[tuple[str, float]]) -> None:
    assert run(**options).loras == [LoraWeight(path=path, scale=scale) for path, scale in expected]


@pytest.mark.parametrize(
    ("prompt", "options", "expected"),
    [
        ("a cat", {"lora": "pixel-art"}, "pixel art, a cat"),
        ("a PIXEL ART cat", {"lora": "pixel-art"}, "a PIXEL ART cat"),  # already there, any case
        ("pixel artistic cat", {"lora": "pixel-art"}, "pixel art, pixel artistic cat"),  # whole words only
        ("a cat", {"lora": "watercolor", "lora2": "pixel-art"}, "wtrclr, soft wash, pixel art, a cat"),
        ("a Soft Wash cat", {"lora": "watercolor"}, "wtrclr, a Soft Wash cat"),
        ("a cat", {"lora": "ink"}, "a cat"),  # no trigger words
        ("a cat", {"style": "retro"}, "pixel art, a cat, retro video game screenshot"),
        ("a cat", {"style": "plain", "lora": "pixel-art"}, "pixel art, masterpiece, a cat"),
        ("{prompt} cat", {"style": "plain"}, "masterpiece, {prompt} cat"),  # the member's braces stay as typed
    ],
    ids=[
        "in-front",
        "already-there",
        "whole-words",
        "each-lora-in-order",
        "one-of-two-there",
        "none",
        "style-template",
        "template-then-trigger",
        "member-braces",
    ],
)
def test_trigger_words_go_in_front_once(prompt: str, options: dict[str, Any], expected: str) -> None:
    resolved = run(prompt=prompt, **options)
    assert resolved.prompt == expected
    assert resolved.options.prompt == prompt  # the member's own, so a reroll resolves it again


def test_the_same_trigger_word_of_two_loras_is_added_once() -> None:
    catalog = Catalog([lora("a", trigger_words=["ohwx"]), lora("b", trigger_words=["OHWX", "b-word"])])
    assert run(catalog, lora="a", lora2="b").prompt == "ohwx, b-word, a cat"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"style": "retro"}, (0.6, 30, 5.0)),
        ({"style": "retro", "strength": 0.85}, (0.85, 30, 5.0)),  # explicitly the usual default: the member's
        ({"style": "retro", "num_inference_steps": 12, "guidance_scale": 2.0}, (0.6, 12, 2.0)),
        ({"style": "plain"}, (0.85, 28, 3.5)),  # a style without defaults keeps the usual ones
        ({"style": "plain", "strength": 0.3}, (0.3, 28, 3.5)),
    ],
    ids=["style-defaults", "member-strength-wins", "member-steps-and-guidance-win", "no-defaults", "member-only"],
)
def test_style_defaults_fill_what_the_member_left_out(
    options: dict[str, Any], expected: tuple[float, int, float]
) -> None:
    resolved = run(**options).options
    assert (resolved.strength, resolved.num_inference_steps, resolved.guidance_scale) == expected


def test_resolved_options_use_the_catalogs_names() -> None:
    resolved = run(style=" Retro", lora="WATERCOLOR ")
    assert (resolved.options.style, resolved.options.lora, resolved.style) == ("retro", "watercolor", "retro")


@pytest.mark.parametrize(
    ("options", "settings", "max_loras", "expected"),
    [
        ({"lora": "nope"}, SETTINGS, 4, "lora: `nope` is not a LoRA here; see /loras for the ones you can use."),
        ({"lora2": "nope`x"}, SETTINGS, 4, "lora2: `nope'x` is not a LoRA here; see /loras"),
        ({"style": "nope"}, SETTINGS, 4, "`nope` is not a style here; see /loras for the styles you can use."),
        ({"lora": "ink", "lora2": "INK"}, SETTINGS, 4, "lora and lora2 name `ink` twice; choose it once"),
        ({"style": "retro", "lora": "ink", "lora2": "ink"}, SETTINGS, 4, "lora and lora2 name `ink` twice"),
        ({"lora": "pixel-art", "lora2": PIXEL}, URLS_ON, 4, "lora and lora2 name `pixel-art` twice"),
        ({"lora": "watercolor", "lora2": "water-copy"}, SETTINGS, 4, "lora and lora2 name the same LoRA twice"),
        (
            {"style": "retro", "lora": "watercolor"},
            SETTINGS,
            2,
            "This job would use 3 LoRAs (the style brings 2); at most 2",
        ),
        ({"lora": "watercolor", "lora2": "ink"}, SETTINGS, 1, "This job would use 2 LoRAs; at most 1 are allowed."),
        ({"lora": PIXEL}, SETTINGS, 4, "lora: LoRAs are chosen by name here, not by link; use only names from /loras."),
        ({"lora2": "http://huggingface.co/x"}, SETTINGS, 4, "lora2: LoRAs are chosen by name here, not by link"),
        ({"lora": "http://huggingface.co/x"}, URLS_ON, 4, "lora: the link must start with https://."),
        (
            {"lora": "https://evil.example/x.safetensors"},
            URLS_ON,
            4,
            "lora: LoRA links may only point to huggingface.co, civitai.com, fal.media, v3.fal.media, "
            "storage.googleapis.com; evil.example is not one of them.",
        ),
        (
            {"lora": "https://evilhuggingface.co/x"},
            URLS_ON,
            4,
            f"lora: LoRA links may only point to {ALLOWED}; evilhug",
        ),
        (
            {"lora": "https://huggingface.co.evil.example/x"},
            URLS_ON,
            4,
            f"lora: LoRA links may only point to {ALLOWED}; huggingface.co.evil.example is not",
        ),
        ({"lora": "https://huggingface.co:444/x"}, URLS_ON, 4, "lora: the link may not name a port or a user."),
        ({"lora_scale": 0.5}, SETTINGS, 4, "lora_scale was given without lora: choose a LoRA or leave out the scale."),
        ({"lora": "ink", "lora2_scale": 2.0}, SETTINGS, 4, "lora2_scale was given without lora2"),
        ({"style": "broken"}, SETTINGS, 4, "The style `broken` uses the LoRA `gone`, which is not here any more"),
    ],
    ids=[
        "unknown-lora",
        "unknown-lora2-backtick",
        "unknown-style",
        "same-name-twice",
        "style-lora-twice-by-member",
        "name-and-its-link",
        "same-path-two-names",
        "over-max-with-style",
        "over-max",
        "url-not-allowed",
        "http-url-not-allowed",
        "url-not-https",
        "host-not-allowed",
        "host-same-ending",
        "host-lookalike",
        "url-port",
        "scale-without-lora",
        "scale-without-lora2",
        "style-lora-gone",
    ],
)
def test_refusals_are_clear(options: dict[str, Any], settings: CatalogSettings, max_loras: int, expected: str) -> None:
    catalog = OWNER.for_server([lora("water-copy", WATER)], [StyleEntry(name="broken", loras=["gone"])])
    with pytest.raises(LoraError) as info:
        run(catalog, settings=settings, max_loras=max_loras, **options)
    assert isinstance(info.value, InputError)
    assert info.value.message.startswith(expected), info.value.message


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        (f"{HF}/other.safetensors", [(f"{HF}/other.safetensors", 1.0)]),
        (
            "https://cdn-lfs.huggingface.co/repos/x.safetensors",
            [("https://cdn-lfs.huggingface.co/repos/x.safetensors", 1.0)],
        ),
        ("https://v3.fal.media/files/trained.safetensors", [("https://v3.fal.media/files/trained.safetensors", 1.0)]),
        (f" {PIXEL} ", [(PIXEL, 0.9)]),  # a catalog entry's link is that entry, with its scale and trigger words
    ],
    ids=["hugging-face", "subdomain", "fal-trainer-output", "entry-by-link"],
)
def test_links_on_allowed_hosts_when_the_owner_allows_them(link: str, expected: list[tuple[str, float]]) -> None:
    resolved = run(settings=URLS_ON, lora=link)
    assert resolved.loras == [LoraWeight(path=path, scale=scale) for path, scale in expected]
    assert resolved.options.lora == link  # a link stays as the member gave it


def test_link_is_described_and_scaled() -> None:
    resolved = run(settings=URLS_ON, lora=f"{HF}/other.safetensors", lora_scale=0.4)
    assert resolved.described == [f"{HF}/other.safetensors × 0.4"] and resolved.prompt == "a cat"


@pytest.mark.parametrize(
    ("prompt_chars", "style", "ok"),
    [(1981, None, True), (1982, None, False), (1968, "plain", True), (1969, "plain", False)],
    ids=["at-the-limit", "one-over", "style-at-the-limit", "style-one-over"],
)
def test_the_prompt_stays_within_2000_characters(prompt_chars: int, style: str | None, ok: bool) -> None:
    options: dict[str, Any] = {
        "prompt": "x" * prompt_chars,
        "lora": "watercolor",
        "style": style,
    }  # adds "wtrclr, soft wash, "
    if ok:
        assert len(run(**options).prompt) == 2000
    else:
        with pytest.raises(LoraError, match=r"over the limit of 2,000; shorten yours by \d+\."):
            run(**options)


# entries a server's admins add


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": "Our-Mascot", "path": f"{HF}/m.safetensors"}, ("our-mascot", 1.0, [], "")),
        (
            {"name": "m", "path": WATER, "scale": 0.5, "trigger_words": "ohwx, , mascot ", "description": " ours "},
            ("m", 0.5, ["ohwx", "mascot"], "ours"),
        ),
        ({"name": "m", "path": INK, "trigger_words": ["a b", "c"]}, ("m", 1.0, ["a b", "c"], "")),
    ],
    ids=["minimal-lower-cased", "words-from-one-string", "words-as-list"],
)
def test_server_lora_is_checked_and_built(fields: dict[str, Any], expected: tuple[str, float, list[str], str]) -> None:
    entry = check_server_lora(OWNER, catalog_settings=SETTINGS, **fields)
    assert (entry.name, entry.scale, entry.trigger_words, entry.description) == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": "two words"}, "That LoRA cannot be added: name: 'two words' is not a name: use 1 to 32 characters"),
        ({"name": "x" * 33}, "That LoRA cannot be added: name:"),
        ({"path": "http://huggingface.co/x"}, "That LoRA cannot be added: path: the link must start with https://."),
        ({"path": "https://evil.example/x"}, "LoRA links may only point to huggingface.co, civitai.com"),
        ({"scale": 5}, "That LoRA cannot be added: scale: input should be less than or equal to 4."),
        ({"description": "d" * 101}, "That LoRA cannot be added: description: string should have at most 100"),
        ({"trigger_words": [str(i) for i in range(11)]}, "That LoRA cannot be added: trigger_words: list should"),
        ({"name": "Pixel-Art"}, "`pixel-art` is a LoRA of the bot's owner, in every server; choose another name."),
        ({"name": "ours"}, "This server already has a LoRA named `ours`; remove it first or choose another name."),
    ],
    ids=[
        "bad-name",
        "long-name",
        "not-https",
        "host-not-allowed",
        "scale",
        "description",
        "too-many-words",
        "owner-name",
        "server-name",
    ],
)
def test_server_lora_refusals(fields: dict[str, Any], expected: str) -> None:
    catalog = OWNER.for_server([lora("ours")], [])
    with pytest.raises(LoraError) as info:
        check_server_lora(
            catalog, catalog_settings=SETTINGS, **({"name": "new", "path": f"{HF}/n.safetensors"} | fields)
        )
    assert info.value.message.startswith(expected), info.value.message


def test_a_full_server_takes_no_more_loras() -> None:
    catalog = OWNER.for_server([lora(f"l{i}") for i in range(500)], [])
    with pytest.raises(LoraError, match="This server has 500 LoRAs, the most it may have"):
        check_server_lora(catalog, name="one-more", path=PIXEL, catalog_settings=SETTINGS)


def test_server_style_is_checked_and_built() -> None:
    catalog = OWNER.for_server([lora("ours")], [])
    style = check_server_style(
        catalog, name="House", prompt="{prompt}, house style", loras="ours:0.5, Pixel-Art", strength=0.7, max_loras=4
    )
    assert (style.name, style.prompt, style.strength) == ("house", "{prompt}, house style", 0.7)
    assert [(used.name, used.scale) for used in style.loras] == [("ours", 0.5), ("pixel-art", None)]
    resolved = run(catalog.for_server([lora("ours")], [style]), style="house")
    assert resolved.loras == [LoraWeight(path=f"{HF}/ours.safetensors", scale=0.5), LoraWeight(path=PIXEL, scale=0.9)]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"prompt": "no placeholder"}, "That style cannot be added: prompt: must hold {prompt} exactly once"),
        ({"prompt": "{prompt}, {style}"}, "That style cannot be added: prompt: must hold {prompt} exactly once"),
        ({"loras": "nope"}, "`nope` is not a LoRA here; add it first or see /loras."),
        ({"loras": "ink:x"}, "That style cannot be added: loras.0.scale: input should be a valid number"),
        ({"loras": "ink, watercolor, pixel-art"}, "A style may use at most 2 LoRAs; this one names 3."),
        ({"loras": "watercolor, water-copy"}, "`water-copy` is the same LoRA as another one of this style"),
        ({"loras": "ink, INK"}, "That style cannot be added: loras: ink appears more than once"),
        ({"name": "retro"}, "`retro` is a style of the bot's owner, in every server; choose another name."),
        ({"name": "mine"}, "This server already has a style named `mine`"),
        ({"num_inference_steps": 51}, "That style cannot be added: num_inference_steps: input should be less than"),
    ],
    ids=[
        "template-without-prompt",
        "template-other-field",
        "unknown-lora",
        "bad-scale",
        "too-many-loras",
        "same-path",
        "same-name",
        "owner-name",
        "server-name",
        "steps",
    ],
)
def test_server_style_refusals(fields: dict[str, Any], expected: str) -> None:
    catalog = OWNER.for_server([lora("water-copy", WATER)], [StyleEntry(name="mine")])
    with pytest.raises(LoraError) as info:
        check_server_style(catalog, max_loras=2, **({"name": "new"} | fields))
    assert info.value.message.startswith(expected), info.value.message
