"""The LoRA and style catalog: autocomplete, a job's LoRAs and prompt; pure, no Discord, SQL or HTTP."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from bot.config import CatalogSettings, LoraEntry, StyleEntry, StyleLora, host_allowed, lora_host, lora_path_problem
from bot.errors import InputError
from bot.fal_models import LoraWeight
from bot.models import InpaintOptions

Kind = Literal["lora", "style"]
MAX_CHOICES = 25  # Discord's limit of autocomplete choices
MAX_CHOICE_CHARS = 100  # Discord's limit on a choice's name and value
MAX_PROMPT_CHARS = 2000  # InpaintOptions.prompt and the /inpaint option
MAX_SERVER_ENTRIES = 500  # LoRAs (and styles) one server's admins may add
STYLE_DEFAULTS = ("strength", "num_inference_steps", "guidance_scale")

E = TypeVar("E", LoraEntry, StyleEntry)


class LoraError(InputError):
    """A LoRA, style or link cannot be used here; the text says which and what to do instead."""


@dataclass(frozen=True, slots=True)
class Choice:
    """One autocomplete suggestion: ``name`` is shown, ``value`` is what the option receives."""

    name: str
    value: str


class Resolved(BaseModel):
    """What a job sends to fal once its style and LoRAs are applied."""

    model_config = ConfigDict(frozen=True)

    options: InpaintOptions  # the style's defaults filled in; ``prompt`` stays the member's own
    prompt: str  # the prompt fal receives and the result shows
    loras: list[LoraWeight]
    style: str | None
    described: list[str]  # "pixel-art × 0.8", for the result embed


class _Shelf(Generic[E]):
    """Entries of one kind from one source, indexed once: by name, and lower-cased for autocomplete."""

    __slots__ = ("by_name", "entries", "rows")

    def __init__(self, entries: Iterable[E]) -> None:
        self.entries: tuple[E, ...] = tuple(entries)
        self.by_name: dict[str, E] = {entry.name: entry for entry in self.entries}
        self.rows = tuple((e.name, f"{e.name}\0{e.description.lower()}", _choice(e)) for e in self.entries)


class Catalog:
    """The LoRAs and styles usable in one server: the owner's (the config's) first, then the server's own.

    Build the owner's once (``Catalog(settings.loras, settings.styles)``) and derive each server's with
    ``for_server``, which indexes only the server's entries. Lookups are dict reads.
    """

    def __init__(self, loras: Iterable[LoraEntry] = (), styles: Iterable[StyleEntry] = ()) -> None:
        self._owner_loras = _Shelf(loras)
        self._owner_styles = _Shelf(styles)
        for shelf in (self._owner_loras, self._owner_styles):
            if len(shelf.by_name) != len(shelf.entries):
                raise ValueError("the owner's entries must have unique names (Settings checks this)")
        self._owner_paths = _paths(self._owner_loras.entries)
        self._server_loras: _Shelf[LoraEntry] = _Shelf(())
        self._server_styles: _Shelf[StyleEntry] = _Shelf(())
        self._server_paths: dict[str, LoraEntry] = {}
        self.hidden: tuple[str, ...] = ()  # server entries left out, "lora pixel-art": the owner's name wins

    def for_server(self, loras: Iterable[LoraEntry], styles: Iterable[StyleEntry]) -> Catalog:
        """This catalog plus one server's entries; those named like an owner's entry (or twice) go to ``hidden``."""
        catalog = copy.copy(self)
        kept_loras, hidden_loras = _visible(loras, self._owner_loras.by_name, "lora")
        kept_styles, hidden_styles = _visible(styles, self._owner_styles.by_name, "style")
        catalog._server_loras = _Shelf(kept_loras)
        catalog._server_styles = _Shelf(kept_styles)
        catalog._server_paths = _paths(kept_loras)
        catalog.hidden = (*hidden_loras, *hidden_styles)
        return catalog

    @property
    def loras(self) -> tuple[LoraEntry, ...]:
        return self._owner_loras.entries + self._server_loras.entries

    @property
    def styles(self) -> tuple[StyleEntry, ...]:
        return self._owner_styles.entries + self._server_styles.entries

    def lora(self, name: str) -> LoraEntry | None:
        key = name.strip().lower()
        return self._owner_loras.by_name.get(key) or self._server_loras.by_name.get(key)

    def style(self, name: str) -> StyleEntry | None:
        key = name.strip().lower()
        return self._owner_styles.by_name.get(key) or self._server_styles.by_name.get(key)

    def lora_by_path(self, path: str) -> LoraEntry | None:
        key = same_file(path)
        return self._owner_paths.get(key) or self._server_paths.get(key)

    def styles_using(self, lora_name: str) -> list[str]:
        """The styles that name this LoRA (an admin removing it is told which would break)."""
        key = lora_name.strip().lower()
        return [style.name for style in self.styles if any(used.name == key for used in style.loras)]

    def _rows(self, kind: Kind) -> Iterator[tuple[str, str, Choice]]:
        if kind == "lora":
            return chain(self._owner_loras.rows, self._server_loras.rows)
        return chain(self._owner_styles.rows, self._server_styles.rows)


def suggest(catalog: Catalog, typed: str, *, kind: Kind, limit: int = MAX_CHOICES) -> list[Choice]:
    """Autocomplete: entries whose name or description holds ``typed`` anywhere (any case), name prefixes first."""
    needle = typed.strip().lower()
    first: list[Choice] = []
    then: list[Choice] = []
    for name, haystack, choice in catalog._rows(kind):
        if name.startswith(needle):
            first.append(choice)
            if len(first) >= limit:
                break
        elif len(then) < limit and needle in haystack:
            then.append(choice)
    return (first + then)[:limit]


@dataclass(slots=True)
class _Pick:
    label: str  # the entry's name, or the link
    path: str
    scale: float
    trigger_words: Sequence[str]
    source: str  # "the style", "lora" or "lora2"


def resolve(
    options: InpaintOptions,
    catalog: Catalog,
    *,
    given: frozenset[str],
    catalog_settings: CatalogSettings,
    max_loras: int,
) -> Resolved:
    """The style's template, defaults and LoRAs, then ``lora`` and ``lora2``, applied to the member's options.

    ``given`` names the options the member set: a style's default fills only the others. A LoRA the style
    already uses, picked again as ``lora``, keeps its place and takes the member's scale.

    Raises:
        LoraError: an unknown name or style, a link that is not allowed, the same LoRA twice, too many LoRAs,
            a scale without its LoRA, or a prompt that grows past 2,000 characters.
    """
    style = None
    if options.style is not None and options.style.strip():
        style = catalog.style(options.style)
        if style is None:
            raise LoraError(f"{_shown(options.style)} is not a style here; see /loras for the styles you can use.")
    picks = _style_picks(style, catalog) if style else []
    by_path = {same_file(pick.path): pick for pick in picks}
    update: dict[str, Any] = {}
    for option, value, scale in (
        ("lora", options.lora, options.lora_scale),
        ("lora2", options.lora2, options.lora2_scale),
    ):
        if value is None or not value.strip():
            if scale is not None:
                raise LoraError(f"{option}_scale was given without {option}: choose a LoRA or leave out the scale.")
            continue
        pick = _member_pick(value, option, catalog, catalog_settings)
        if not _is_link(value):
            update[option] = pick.label  # the catalog's spelling: "Pixel-Art " is pixel-art
        if scale is not None:
            pick.scale = scale
        if (earlier := by_path.get(same_file(pick.path))) is None:
            picks.append(by_path.setdefault(same_file(pick.path), pick))
        elif earlier.source == "the style":
            earlier.scale = pick.scale if scale is not None else earlier.scale
            earlier.source = option  # a second pick of it is a duplicate
        else:
            same = f"{_shown(pick.label)} twice" if pick.label == earlier.label else "the same LoRA twice"
            raise LoraError(f"lora and lora2 name {same}; choose it once and set its weight with lora_scale.")
    if len(picks) > max_loras:
        brought = f" (the style brings {len(style.loras)})" if style and style.loras else ""
        raise LoraError(f"This job would use {len(picks)} LoRAs{brought}; at most {max_loras} are allowed.")
    prompt = _prompt(options.prompt, style, picks)
    if style is not None:
        update["style"] = style.name
        for field in STYLE_DEFAULTS:
            if field not in given and (default := getattr(style, field)) is not None:
                update[field] = default
    return Resolved(
        options=options.model_copy(update=update),
        prompt=prompt,
        loras=[LoraWeight(path=pick.path, scale=pick.scale) for pick in picks],
        style=style.name if style else None,
        described=[f"{_shown(pick.label, 100, quote=False)} × {pick.scale:g}" for pick in picks],
    )


def check_server_lora(
    catalog: Catalog,
    *,
    name: str,
    path: str,
    scale: float = 1.0,
    trigger_words: str | Sequence[str] = (),
    description: str = "",
    catalog_settings: CatalogSettings,
) -> LoraEntry:
    """A LoRA a server's admin adds (``trigger_words`` may be one comma-separated string), checked as the config's.

    Raises:
        LoraError: a bad field, a host not allowed, a name the owner or this server already uses, a full server.
    """
    words = (
        [word for word in trigger_words.split(",") if word.strip()] if isinstance(trigger_words, str) else trigger_words
    )
    entry = _build(LoraEntry, "LoRA", name=name, path=path, scale=scale, trigger_words=words, description=description)
    if not host_allowed(host := lora_host(entry.path), catalog_settings.allowed_hosts):
        raise LoraError(_host_refusal(host, catalog_settings))
    _check_new_name(entry.name, "LoRA", catalog._owner_loras, catalog._server_loras)
    return entry


def check_server_style(
    catalog: Catalog,
    *,
    name: str,
    prompt: str = "{prompt}",
    description: str = "",
    loras: str | Sequence[StyleLora | str] = (),
    strength: float | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    max_loras: int,
) -> StyleEntry:
    """A style a server's admin adds; ``loras`` may be one string, ``"pixel-art:0.8, watercolor"``.

    Raises:
        LoraError: a bad field, a LoRA not in this catalog, too many LoRAs, a name already used.
    """
    used: Sequence[Any] = loras
    if isinstance(loras, str):
        parts = [part.split(":", 1) for part in loras.split(",") if part.strip()]
        used = [dict(zip(("name", "scale"), (bit.strip() for bit in part), strict=False)) for part in parts]
    style = _build(
        StyleEntry,
        "style",
        name=name,
        prompt=prompt,
        description=description,
        loras=used,
        strength=strength,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
    )
    if len(style.loras) > max_loras:
        raise LoraError(f"A style may use at most {max_loras} LoRAs; this one names {len(style.loras)}.")
    paths: set[str] = set()
    for lora in style.loras:
        if (entry := catalog.lora(lora.name)) is None:
            raise LoraError(f"{_shown(lora.name)} is not a LoRA here; add it first or see /loras.")
        if same_file(entry.path) in paths:
            raise LoraError(f"{_shown(lora.name)} is the same LoRA as another one of this style; use it once.")
        paths.add(same_file(entry.path))
    _check_new_name(style.name, "style", catalog._owner_styles, catalog._server_styles)
    return style


# helpers


def _choice(entry: LoraEntry | StyleEntry) -> Choice:
    text = " ".join(f"{entry.name}: {entry.description}".split()) if entry.description else entry.name
    if len(text) > MAX_CHOICE_CHARS:
        text = text[: MAX_CHOICE_CHARS - 1] + "…"
    return Choice(name=text, value=entry.name)


def _visible(entries: Iterable[E], owner: dict[str, E], kind: Kind) -> tuple[list[E], list[str]]:
    kept: list[E] = []
    hidden: list[str] = []
    seen: set[str] = set()
    for entry in entries:
        if entry.name in owner or entry.name in seen:
            hidden.append(f"{kind} {entry.name}")
        else:
            seen.add(entry.name)
            kept.append(entry)
    return kept, hidden


def same_file(path: str) -> str:
    """One key for links to the same file: the host in any case, no trailing slash, no query or fragment (a
    member's link with "?download=1" names the same LoRA)."""
    parts = urlsplit(path.strip())
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}{parts.path.rstrip('/')}"


def _paths(loras: Iterable[LoraEntry]) -> dict[str, LoraEntry]:
    paths: dict[str, LoraEntry] = {}
    for lora in loras:
        paths.setdefault(same_file(lora.path), lora)
    return paths


def _style_picks(style: StyleEntry, catalog: Catalog) -> list[_Pick]:
    picks: dict[str, _Pick] = {}
    for used in style.loras:
        if (entry := catalog.lora(used.name)) is None:
            raise LoraError(
                f"The style {_shown(style.name)} uses the LoRA {_shown(used.name)}, which is not here any more; "
                "ask an admin to fix the style."
            )
        if same_file(entry.path) in picks:
            raise LoraError(f"The style {_shown(style.name)} uses one LoRA twice; ask an admin to fix the style.")
        weight = entry.scale if used.scale is None else used.scale
        picks[same_file(entry.path)] = _Pick(entry.name, entry.path, weight, entry.trigger_words, "the style")
    return list(picks.values())


def _member_pick(value: str, option: str, catalog: Catalog, settings: CatalogSettings) -> _Pick:
    text = value.strip()
    if _is_link(text):
        if not settings.allow_urls:
            raise LoraError(f"{option}: LoRAs are chosen by name here, not by link; use only names from /loras.")
        if problem := lora_path_problem(text):
            raise LoraError(f"{option}: {problem}.")
        if not host_allowed(host := lora_host(text), settings.allowed_hosts):
            raise LoraError(f"{option}: {_host_refusal(host, settings)}")
        entry = catalog.lora_by_path(text)
        if entry is None:
            return _Pick(text, text, 1.0, (), option)
    elif (entry := catalog.lora(text)) is None:
        raise LoraError(f"{option}: {_shown(text)} is not a LoRA here; see /loras for the ones you can use.")
    return _Pick(entry.name, entry.path, entry.scale, entry.trigger_words, option)


def _is_link(value: str) -> bool:
    text = value.strip().lower()
    return "://" in text or text.startswith(("http:", "https:", "www."))


def _prompt(member_prompt: str, style: StyleEntry | None, picks: Sequence[_Pick]) -> str:
    """The style's template around the member's prompt, each missing trigger word in front once."""
    text = style.prompt.replace("{prompt}", member_prompt) if style else member_prompt
    added: list[str] = []
    for pick in picks:
        for word in pick.trigger_words:
            # whole words, any case: "pixel art" is in "PIXEL ART of a cat", "art" is not in "artistic"
            pattern = rf"(?<!\w){re.escape(word)}(?!\w)"
            if not any(re.search(pattern, seen, re.IGNORECASE) for seen in (text, *added)):
                added.append(word)
    prompt = ", ".join([*added, text])
    if len(prompt) > MAX_PROMPT_CHARS:
        extra = "the style" + (" and the trigger words" if added else "") if style else "the trigger words"
        raise LoraError(
            f"With {extra} the prompt would be {len(prompt):,} characters, over the limit of {MAX_PROMPT_CHARS:,}; "
            f"shorten yours by {len(prompt) - MAX_PROMPT_CHARS:,}."
        )
    return prompt


def _host_refusal(host: str, settings: CatalogSettings) -> str:
    allowed = ", ".join(settings.allowed_hosts) or "no host at all"
    return f"LoRA links may only point to {allowed}; {host or 'this link'} is not one of them."


def _check_new_name(name: str, what: str, owner: _Shelf[E], server: _Shelf[E]) -> None:
    if name in owner.by_name:
        raise LoraError(f"{_shown(name)} is a {what} of the bot's owner, in every server; choose another name.")
    if name in server.by_name:
        raise LoraError(
            f"This server already has a {what} named {_shown(name)}; remove it first or choose another name."
        )
    if len(server.entries) >= MAX_SERVER_ENTRIES:
        raise LoraError(f"This server has {MAX_SERVER_ENTRIES} {what}s, the most it may have; remove one first.")


def _build(model: type[E], what: str, **fields: Any) -> E:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        raise LoraError(f"That {what} cannot be added: {key}: {message[:1].lower()}{message[1:]}.") from None


def _shown(text: str, limit: int = 60, *, quote: bool = True) -> str:
    """A member's text, safe inside a message: no backticks or line breaks, cut to ``limit``."""
    text = " ".join(text.replace("`", "'").split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"`{text}`" if quote else text
