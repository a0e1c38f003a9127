"""The LoRAs and styles usable in each server (the owner's and its admins'), kept in memory so that autocomplete
answers without a query; the only writer of a server's catalog entries."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from bot import loras
from bot.config import LoraEntry, Settings, StyleEntry, StyleLora, host_allowed, lora_host
from bot.loras import Catalog, Choice, LoraError
from bot.models import InpaintOptions
from bot.progress import member_text
from bot.store import Store

log = logging.getLogger(__name__)

Kind = Literal["lora", "style"]
PAGE_CHARS = 1800  # one page of /loras: an ephemeral message holds 2,000 characters


class LoraLibrary:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.owner = Catalog(settings.loras, settings.styles)
        self._servers: dict[int, Catalog] = {}  # filled on first use, replaced when an admin changes it
        self._changes: dict[int, int] = {}  # per server: how many changes, so that a read begun before one is not kept

    async def catalog(self, guild_id: int | None) -> Catalog:
        """What members of ``guild_id`` may use: one indexed query the first time, memory afterwards."""
        if guild_id is None:
            return self.owner
        cached = self._servers.get(guild_id)
        if cached is None:
            changes = self._changes.get(guild_id, 0)
            server_loras, server_styles = await self.store.catalog_entries(guild_id)
            allowed = self.settings.catalog.allowed_hosts
            for entry in server_loras:
                if not host_allowed(lora_host(entry.path), allowed):  # the owner took the host off the list since
                    log.warning("guild=%s LoRA %s is on a host no longer allowed; left out", guild_id, entry.name)
            usable = [entry for entry in server_loras if host_allowed(lora_host(entry.path), allowed)]
            cached = self.owner.for_server(usable, server_styles)
            for name in cached.hidden:
                log.warning("guild=%s catalog entry %s is hidden by the owner's entry of that name", guild_id, name)
            if self._changes.get(guild_id, 0) == changes:  # an admin's change meanwhile: this read is stale
                self._servers[guild_id] = cached
        return cached

    def _changed(self, guild_id: int) -> None:
        self._changes[guild_id] = self._changes.get(guild_id, 0) + 1
        self._servers.pop(guild_id, None)

    async def suggest(self, guild_id: int | None, typed: str, kind: Kind) -> list[Choice]:
        return loras.suggest(await self.catalog(guild_id), typed, kind=kind)

    async def resolve(self, options: InpaintOptions, guild_id: int | None, given: frozenset[str]) -> loras.Resolved:
        """The member's options with the style and LoRAs applied.

        Raises:
            LoraError: an unknown name, the same LoRA twice, too many, or a link that is not allowed.
        """
        return loras.resolve(
            options,
            await self.catalog(guild_id),
            given=given,
            catalog_settings=self.settings.catalog,
            max_loras=self.settings.limits.max_loras,
        )

    # the admins' changes

    async def add_lora(
        self, guild_id: int, *, by: int, name: str, path: str, scale: float, trigger_words: str, description: str
    ) -> str:
        """Raises: LoraError for an entry that cannot be added."""
        entry = loras.check_server_lora(
            await self.catalog(guild_id),
            name=name,
            path=path,
            scale=scale,
            trigger_words=trigger_words,
            description=description,
            catalog_settings=self.settings.catalog,
        )
        if not await self.store.add_catalog_entry(guild_id, "lora", entry.name, entry.model_dump_json(), by=by):
            raise LoraError(f"This server already has a LoRA named {entry.name}.")
        self._changed(guild_id)
        log.info("guild=%s user=%s added LoRA %s", guild_id, by, entry.name)
        return f"Added the LoRA **{entry.name}** (scale {entry.scale:g}). Members can pick it in `/inpaint lora`."

    async def add_style(
        self,
        guild_id: int,
        *,
        by: int,
        name: str,
        prompt: str,
        description: str,
        lora_names: str,
        strength: float | None,
        num_inference_steps: int | None,
        guidance_scale: float | None,
    ) -> str:
        """Raises: LoraError for a style that cannot be added."""
        entry = loras.check_server_style(
            await self.catalog(guild_id),
            name=name,
            prompt=prompt,
            description=description,
            loras=lora_names,
            strength=strength,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            max_loras=self.settings.limits.max_loras,
        )
        if not await self.store.add_catalog_entry(guild_id, "style", entry.name, entry.model_dump_json(), by=by):
            raise LoraError(f"This server already has a style named {entry.name}.")
        self._changed(guild_id)
        log.info("guild=%s user=%s added style %s", guild_id, by, entry.name)
        return f"Added the style **{entry.name}**. Members can pick it in `/inpaint style`."

    async def remove(self, guild_id: int, kind: Kind, name: str, *, by: int) -> str:
        """Raises: LoraError when the entry is the owner's, unknown here, or still used by a style."""
        catalog = await self.catalog(guild_id)
        name = name.strip().lower()
        owner_has = self.owner.lora(name) if kind == "lora" else self.owner.style(name)
        if owner_has is not None:
            raise LoraError(f"{name} comes from the bot's configuration; only its owner can remove it.")
        if kind == "lora" and (users := catalog.styles_using(name)):
            raise LoraError(f"The style(s) {', '.join(users)} use {name}; remove them first.")
        if not await self.store.remove_catalog_entry(guild_id, kind, name, by=by):
            raise LoraError(f"This server has no {'LoRA' if kind == 'lora' else 'style'} named {name}.")
        self._changed(guild_id)
        log.info("guild=%s user=%s removed %s %s", guild_id, by, kind, name)
        return f"Removed the {'LoRA' if kind == 'lora' else 'style'} **{name}**."

    # /loras

    async def pages(self, guild_id: int | None) -> list[str]:
        """What members can use here, as pages of an ephemeral message; one page when there is nothing."""
        catalog = await self.catalog(guild_id)
        lines = [*(_style_line(s) for s in catalog.styles), *(_lora_line(entry) for entry in catalog.loras)]
        if not lines:
            return ["No LoRAs or styles are set up here yet. Admins add them with `/fluxpaint lora add`."]
        return _paged(lines)


def _style_line(style: StyleEntry) -> str:
    used = ", ".join(_style_lora(lora) for lora in style.loras)
    about = f": {member_text(style.description)}" if style.description else ""
    return f"🎨 **{style.name}**{about}" + (f" · LoRAs {used}" if used else "")


def _style_lora(lora: StyleLora) -> str:
    return lora.name if lora.scale is None else f"{lora.name} × {lora.scale:g}"


def _lora_line(entry: LoraEntry) -> str:
    about = f": {member_text(entry.description)}" if entry.description else ""
    words = f" · trigger: {', '.join(member_text(w) for w in entry.trigger_words)}" if entry.trigger_words else ""
    return f"🧩 **{entry.name}** × {entry.scale:g}{about}{words}"


def _paged(lines: Sequence[str]) -> list[str]:
    pages: list[list[str]] = [[]]
    size = 0
    for line in lines:
        if pages[-1] and size + len(line) + 1 > PAGE_CHARS:
            pages.append([])
            size = 0
        pages[-1].append(line)
        size += len(line) + 1
    total = len(pages)
    return ["\n".join(page) + (f"\n-# page {n}/{total}" if total > 1 else "") for n, page in enumerate(pages, 1)]
