"""LoRA and style autocomplete with 500 catalog entries: interaction-to-callback time of /inpaint's lora option."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from bench.rig import Figure, Rig, ms, percentile, rig
from tests.fakes.discord import FakeInteraction

TARGET_S = 0.050  # issue 13: p99 under 50 ms from interaction to callback
AUTOCOMPLETE_RESULT = 8  # APPLICATION_COMMAND_AUTOCOMPLETE_RESULT
WORDS = ("pixel", "water", "anime", "film", "neon", "sketch", "oil", "clay", "comic", "retro")
HF = "https://huggingface.co/bench/loras/resolve/main"


def _entry(n: int, where: str) -> dict[str, Any]:
    word = WORDS[n % len(WORDS)]
    return {
        "name": f"{word}-{where}-{n:03d}",
        "path": f"{HF}/{word}-{where}-{n:03d}.safetensors",
        "trigger_words": [f"{word} style"],
        "description": f"{word} look number {n}, {where} entry",
    }


def _loras_toml(entries: list[dict[str, Any]]) -> str:
    """``[[loras]]`` tables: the rig writes one table per section and cannot write a list of them."""
    lines: list[str] = []
    for entry in entries:
        lines += ["", "[[loras]]"] + [f"{key} = {json.dumps(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"


async def _admin_lora_add(bench: Rig, entry: dict[str, Any]) -> FakeInteraction:
    """``/fluxpaint lora add`` as the server's admin (Manage Server)."""
    options = {**entry, "trigger_words": ", ".join(entry["trigger_words"])}
    return await bench.discord.slash("fluxpaint lora add", user="admin", options=options)


async def _ask(bench: Rig, typed: str) -> FakeInteraction:
    interaction = await bench.discord.autocomplete("inpaint", focused="lora", value=typed)
    await bench.discord.wait_for(lambda: interaction.choices is not None, 10)
    (callback,) = interaction.callbacks
    assert callback.type == AUTOCOMPLETE_RESULT and callback.status == 200, callback
    return interaction


async def _suggest(bench: Rig, typed: str) -> list[dict[str, Any]]:
    return list((await _ask(bench, typed)).choices or [])


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _typed(rng: random.Random, names: list[str]) -> str:
    """What a member has typed so far: empty, a prefix of a name, or a word from the middle or a description."""
    kind = rng.randrange(5)
    name = rng.choice(names)
    if kind == 0:
        return ""
    if kind == 1:
        return name[: rng.randint(1, len(name))]
    if kind == 2:
        return rng.choice(("server", "owner", "look", "entry", "number 4"))
    if kind == 3:
        return name.split("-", 1)[1][: rng.randint(1, 8)]  # "server-0", matched inside the name
    return rng.choice(("zzz", "nothing-like-this"))  # no match: every entry is read


async def run(count: int = 1000, per_source: int = 250) -> list[Figure]:
    owner = [_entry(n, "owner") for n in range(per_source)]
    server = [_entry(n, "server") for n in range(per_source)]
    async with rig() as bench:
        # the owner's 250 go in the config file, which the rig cannot write: restart the bot with them appended
        await bench.bot.terminate()
        with bench.bot.config.open("a") as config:
            config.write(_loras_toml(owner))
        await bench.bot.start()
        started = time.monotonic()
        for entry in server:
            added = await _admin_lora_add(bench, entry)

            def answered(added: FakeInteraction = added) -> bool:
                original = added.original()
                return original is not None and not original.loading

            await bench.discord.wait_for(answered, 30)
            content = added.original()
            assert content is not None and "Added the LoRA" in content.content, content and content.content
        adding_s = (time.monotonic() - started) / len(server)
        rng = random.Random(13)
        names = [e["name"] for e in owner + server]
        latencies: list[float] = []
        most_choices = 0
        for last in (owner[-1]["name"], server[-1]["name"]):  # both sources are searched, to their last entry
            assert [c["value"] for c in await _suggest(bench, last)] == [last]
        for _ in range(count):
            interaction = await _ask(bench, _typed(rng, names))
            latency = interaction.response_latency_s
            assert latency is not None
            latencies.append(latency)
            most_choices = max(most_choices, len(interaction.choices or []))
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    entries = len(owner) + len(server)
    return [
        Figure(f"autocomplete p50, {count} lookups over {entries} LoRAs", _ms(p50)),
        Figure(f"autocomplete p99, {count} lookups over {entries} LoRAs", _ms(p99), "< 50 ms", met=p99 < TARGET_S),
        Figure("autocomplete max", _ms(max(latencies))),
        Figure("most suggestions in one answer", str(most_choices), "≤ 25 (Discord)", met=most_choices <= 25),
        Figure(f"/fluxpaint lora add, each of {len(server)} (one after another)", ms(adding_s)),
    ]
