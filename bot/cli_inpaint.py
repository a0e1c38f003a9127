"""``fluxpaint inpaint``: one job at fal from the terminal, with the bot's mask sources and pipeline; no Discord."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import aiohttp
import pydantic

from bot import images, masks
from bot.config import Settings
from bot.downloads import fetch
from bot.fal import FalQueueClient
from bot.fal_models import FalHandle, FalJobError, LoraWeight, SegmentInput, SegmentOutput, fal_input
from bot.intake import estimate_cost
from bot.loras import STYLE_DEFAULTS, Catalog, LoraError, resolve
from bot.models import InpaintOptions, MaskRegion
from bot.progress import usd

log = logging.getLogger(__name__)

SEGMENT_INPUT_NAME = "segment-input.jpg"
# a LoRA's scale is split off only from a trailing ":<number>": a link holds ':' of its own (https://, a port)
LORA_SPEC = re.compile(r"^(?P<lora>.+?):(?P<scale>\d+(?:\.\d*)?|\.\d+)$")


def add_arguments(job: argparse.ArgumentParser) -> None:
    job.add_argument("--image", required=True)
    sources = job.add_argument_group("the area to repaint (one of these; default: the image's transparent areas)")
    sources.add_argument("--mask", help="a mask file: white = repaint, black = keep")
    sources.add_argument("--mask-prompt", "--mask_prompt", dest="mask_prompt", help='words, like "the sky"')
    sources.add_argument("--box", help="x1,y1,x2,y2 in percent of the width and height, like 25,10,75,60")
    sources.add_argument("--region", choices=get_args(MaskRegion))
    job.add_argument("--prompt", required=True)
    job.add_argument("--out", required=True, help="folder for the results")
    # no argparse defaults for the three a style may set: what the user typed must be told from what was left out
    job.add_argument("--strength", type=float, help="0.01 to 1 (default 0.85, or the style's)")
    job.add_argument("--num-images", "--num_images", dest="num_images", type=int, default=1, choices=range(1, 5))
    job.add_argument(
        "--num-inference-steps",
        "--num_inference_steps",
        dest="num_inference_steps",
        type=int,
        help="1 to 50 (default 28, or the style's)",
    )
    job.add_argument(
        "--guidance-scale",
        "--guidance_scale",
        dest="guidance_scale",
        type=float,
        help="0 to 35 (default 3.5, or the style's)",
    )
    job.add_argument("--seed", type=int)
    job.add_argument(
        "--output-format", "--output_format", dest="output_format", choices=("jpeg", "png"), default="jpeg"
    )
    job.add_argument("--invert-mask", "--invert_mask", dest="invert_mask", action="store_true")
    job.add_argument("--mask-grow", "--mask_grow", dest="mask_grow", type=int, default=0, help="px, 0 to 128")
    job.add_argument(
        "--mask-feather", "--mask_feather", dest="mask_feather", type=int, default=8, help="px, 0 to 64 (default 8)"
    )
    catalog = job.add_argument_group("LoRAs and styles (the config's [[loras]] and [[styles]])")
    catalog.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME_OR_URL[:SCALE]",
        help="a [[loras]] name, or an https link if catalog.allow_urls; repeat for more, in order (scale 0 to 4, "
        "default the entry's own); a style's LoRAs come first, limits.max_loras caps the total",
    )
    catalog.add_argument("--style", help="a [[styles]] name: its prompt template, LoRAs and defaults")


def read_options(args: argparse.Namespace) -> tuple[InpaintOptions, masks.MaskSource]:
    """The options within fal's ranges, a prompt that isn't blank and one mask source, before any file is read or
    anything is sent. The server limits and blocked terms of ``/inpaint`` are for members; the owner's own key is
    not held to them.

    Raises:
        ValueError: an option out of range or a blank prompt.
        masks.MaskError: two mask sources, or a box that cannot be read (the bot's own messages).
    """
    if not args.prompt.strip():
        raise ValueError("--prompt is empty; describe what should appear in the masked area")
    if args.mask_prompt is not None and not args.mask_prompt.strip():
        raise ValueError('--mask-prompt is empty; say what to repaint, like "the sky"')
    typed = {field: getattr(args, field) for field in STYLE_DEFAULTS if getattr(args, field) is not None}
    first_two = dict(zip(("lora", "lora2"), (split_lora(spec) for spec in args.lora), strict=False))
    try:
        options = InpaintOptions(
            prompt=args.prompt.strip(),
            **typed,
            **{f"{option}_scale": scale for option, (_, scale) in first_two.items()},
            **{option: lora for option, (lora, _) in first_two.items()},
            style=args.style,
            num_images=args.num_images,
            seed=args.seed,
            output_format=args.output_format,
            invert_mask=args.invert_mask,
            mask_prompt=args.mask_prompt.strip() if args.mask_prompt is not None else None,
            box=args.box,
            region=args.region,
            mask_grow=args.mask_grow,
            mask_feather=args.mask_feather,
        )
    except pydantic.ValidationError as exc:
        problems = [f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in exc.errors()]
        raise ValueError("; ".join(problems)) from None
    return options, masks.mask_source(options, has_file=args.mask is not None)


def split_lora(spec: str) -> tuple[str, float | None]:
    """``NAME_OR_URL[:SCALE]`` as (name or link, scale or None); the scale only from a trailing ``:<number>``.

    Raises:
        ValueError: no name, or a scale outside 0 to 4.
    """
    found = LORA_SPEC.match(spec.strip())
    lora, scale = (found["lora"].strip(), float(found["scale"])) if found else (spec.strip(), None)
    if not lora:
        raise ValueError(f"--lora {spec!r}: give a [[loras]] name (or a link), like pixel-art:0.8")
    if scale is not None and not 0 <= scale <= 4:
        raise ValueError(f"--lora {spec!r}: the scale must be 0 to 4")
    return lora, scale


@dataclass(frozen=True, slots=True)
class Chosen:
    """The job as fal receives it: the options with the style's defaults, its prompt, LoRAs and their names."""

    options: InpaintOptions
    prompt: str
    loras: list[LoraWeight]
    style: str | None
    described: list[str]  # "pixel-art × 0.8"


def choose_loras(settings: Settings, args: argparse.Namespace, options: InpaintOptions) -> Chosen:
    """The style and every ``--lora`` applied with the rules of ``/inpaint`` (bot.loras.resolve): names from the
    config, links only when ``catalog.allow_urls``, each LoRA once, at most ``limits.max_loras``. ``resolve`` takes
    two LoRAs; each further one is resolved alone against the prompt so far and checked here for the rest.

    Raises:
        LoraError: an unknown name or style, a link not allowed, a LoRA twice, too many, a prompt grown too long.
    """
    catalog = Catalog(settings.loras, settings.styles)
    given = frozenset(field for field in STYLE_DEFAULTS if getattr(args, field) is not None)
    max_loras = settings.limits.max_loras
    try:
        first = resolve(options, catalog, given=given, catalog_settings=settings.catalog, max_loras=max_loras)
    except LoraError as exc:
        raise LoraError(_flagged(exc.message, {"lora2: ": 2, "lora: ": 1})) from None
    style = catalog.style(first.style) if first.style else None
    text = style.prompt.replace("{prompt}", options.prompt) if style else options.prompt
    words, prompt = first.prompt.removesuffix(text), first.prompt  # the trigger words in front, each ", "-ended
    picks = [_Pick(_label(shown), weight) for shown, weight in zip(first.described, first.loras, strict=True)]
    # a style's LoRA named again takes the new scale in its place, once: as resolve does for lora and lora2
    retunable = {pick.weight.path for pick in picks[: len(style.loras) if style else 0]}
    retunable -= {_path(catalog, lora) for lora in (options.lora, options.lora2) if lora}
    for n, spec in enumerate(args.lora[2:], start=3):
        lora, scale = split_lora(spec)
        alone = options.model_copy(
            update={
                "prompt": prompt,
                "style": None,
                "lora": lora,
                "lora_scale": scale,
                "lora2": None,
                "lora2_scale": None,
            }
        )
        try:
            one = resolve(alone, catalog, given=given, catalog_settings=settings.catalog, max_loras=1)
        except LoraError as exc:
            raise LoraError(_flagged(exc.message, {"lora: ": n})) from None
        (weight,) = one.loras
        earlier = next((pick for pick in picks if pick.weight.path == weight.path), None)
        if earlier is not None and weight.path in retunable:
            retunable.discard(weight.path)
            earlier.weight = weight if scale is not None else earlier.weight
            continue
        if earlier is not None:
            raise LoraError(f"--lora #{n}: {earlier.label} is already used; give each LoRA once, with its scale.")
        picks.append(_Pick(_label(one.described[0]), weight))
        if len(picks) > max_loras:
            raise LoraError(f"This job would use {len(picks)} LoRAs or more; at most {max_loras} are allowed.")
        words += one.prompt.removesuffix(prompt)
        prompt = one.prompt
    return Chosen(
        options=first.options,
        prompt=words + text,
        loras=[pick.weight for pick in picks],
        style=first.style,
        described=[f"{pick.label} × {pick.weight.scale:g}" for pick in picks],
    )


@dataclass(slots=True)
class _Pick:
    label: str
    weight: LoraWeight


def _label(described: str) -> str:
    return described.rsplit(" × ", 1)[0]


def _path(catalog: Catalog, lora: str) -> str:
    entry = catalog.lora(lora)
    return entry.path if entry else lora.strip()


def _flagged(message: str, options: dict[str, int]) -> str:
    """resolve's message for ``lora``/``lora2`` as the CLI's: "--lora #2: ..."."""
    for prefix, n in options.items():
        if message.startswith(prefix):
            return f"--lora #{n}: {message.removeprefix(prefix)}"
    return message


def _progress(text: str) -> None:
    sys.stderr.write(f"\r\x1b[2K{text}")
    sys.stderr.flush()


def _note(text: str) -> None:
    print(text, file=sys.stderr)


async def inpaint_once(
    settings: Settings,
    http: aiohttp.ClientSession,
    args: argparse.Namespace,
    chosen: Chosen,
    source: masks.MaskSource,
    image: bytes,
    mask: bytes | None,
) -> int:
    """Find the mask (words: fal's segmentation first), send the inpainting once, and write the results at the
    input's size, pasted into the photo inside the mask.

    Raises:
        UserFacingError: an input that cannot be used, words that matched nothing, or fal's failures.
    """
    limits = settings.limits
    options = chosen.options
    fal = FalQueueClient(http, settings.fal)
    searched = 0.0
    if source.kind == "words":
        searched = settings.masks.segment_price_usd
        mask = await _find_mask(settings, http, fal, options, image)
    prepared = await asyncio.to_thread(
        images.prepare,
        image,
        mask,
        invert=options.invert_mask,
        limits=limits,
        source=source,
        grow_px=options.mask_grow,
        feather_px=options.mask_feather,
    )
    for note in prepared.notes:
        _note(f"note: {note}")
    out_dir = Path(args.out)
    stem = Path(args.image).stem
    preview = out_dir / f"{stem}-mask-preview.jpg"
    await asyncio.to_thread(preview.write_bytes, prepared.preview)
    _note(f"mask preview: {preview}")
    cost = estimate_cost(
        settings.fal.price_per_megapixel, prepared.sent_width, prepared.sent_height, options.num_images
    )
    found = f" (including {usd(searched)} to find the mask)" if searched else ""
    _note(f"estimated cost: {usd(cost + searched)}{found}")
    image_url = await _input_url(settings, fal, prepared.image, prepared.image_mime, "input")
    mask_url = await _input_url(settings, fal, prepared.mask, "image/png", "mask.png")
    if chosen.style:
        _note(f"style: {chosen.style}")
    for described in chosen.described:
        _note(f"lora: {described}")
    if chosen.style or chosen.loras:
        _note(f"prompt sent to fal: {chosen.prompt}")
    handle, _ = await fal.submit(fal_input(options, image_url, mask_url, prompt=chosen.prompt, loras=chosen.loras))
    _note(f"request id: {handle.request_id}")
    await _follow(fal, handle, working="generating…")
    output = await fal.result(handle)
    _progress("downloading…\n")
    for index, img in enumerate(output.images, start=1):
        raw = await fetch(
            http,
            img.url,
            allowed_hosts=settings.fal.media_hosts,
            max_bytes=limits.max_output_bytes,
            timeout_s=limits.download_timeout_s,
            what="result image",
        )
        final = await asyncio.to_thread(
            images.finish_output,
            raw,
            width=prepared.width,
            height=prepared.height,
            output_format=options.output_format,
            limits=limits,
            original=image,
            crop=prepared.crop,
            full_mask=prepared.full_mask,
            feather_px=options.mask_feather,
        )
        suffix = "png" if options.output_format == "png" else "jpg"
        path = out_dir / f"{stem}-inpainted-{index}.{suffix}"
        await asyncio.to_thread(path.write_bytes, final)
        print(path)
    _note(f"seed: {output.seed}")
    return 0


async def _find_mask(
    settings: Settings, http: aiohttp.ClientSession, fal: FalQueueClient, options: InpaintOptions, image: bytes
) -> bytes:
    """fal's segmentation of the options' ``mask_prompt`` in the image (SPEC 11): submitted once, its mask file
    downloaded.

    Raises:
        UserFacingError: the image cannot be used, or fal failed to find the mask.
    """
    limits = settings.limits
    found = await asyncio.to_thread(images.prepare_for_segmentation, image, limits=limits)
    whole = masks.sent_size(found.width, found.height, limits.max_megapixels, min_megapixels=0)
    searched = settings.masks.segment_price_usd
    most = estimate_cost(settings.fal.price_per_megapixel, *whole, options.num_images) + searched
    # the crop, and so the inpainting's price, is known once the mask is: until then, the whole image's
    _note(f"estimated cost: at most {usd(most)} (finding the mask {usd(searched)}, then the inpainting)")
    words = options.mask_prompt or ""
    image_url = await _input_url(settings, fal, found.image, found.image_mime, SEGMENT_INPUT_NAME)
    payload = SegmentInput(prompt=words, image_url=image_url)
    handle, _ = await fal.submit(payload, endpoint=settings.masks.segment_endpoint)
    _note(f"segmentation request id: {handle.request_id}")
    try:
        await _follow(fal, handle, working=f"Finding “{words}” in your image…", done="mask found")
        output = await fal.result(handle, SegmentOutput)
    except FalJobError as exc:
        raise FalJobError(f"fal could not find the mask: {exc.message}") from exc
    return await fetch(
        http,
        output.image.url,
        allowed_hosts=settings.fal.media_hosts,
        max_bytes=limits.max_output_bytes,
        timeout_s=limits.download_timeout_s,
        what="segmentation mask",
    )


async def _input_url(settings: Settings, fal: FalQueueClient, data: bytes, mime: str, name: str) -> str:
    if settings.fal.upload_inputs:
        return await fal.upload(data, mime, name)
    return await asyncio.to_thread(images.data_uri, data, mime)


async def _follow(fal: FalQueueClient, handle: FalHandle, *, working: str, done: str = "completed") -> None:
    """The progress line until fal completes the request; Ctrl-C cancels it at fal."""
    try:
        async for status in fal.watch(handle):
            if status.status == "IN_QUEUE":
                where = status.queue_position if status.queue_position is not None else "?"
                _progress(f"queued at fal: position {where}")
            elif status.status == "IN_PROGRESS":
                _progress(working)
            else:
                _progress(f"{done}\n")
    except asyncio.CancelledError:
        outcome = await fal.cancel(handle)
        print(f"\ncancelled at fal ({outcome})", file=sys.stderr)
        raise
