"""``fluxpaint inpaint``: one job at fal from the terminal, with the bot's mask sources and pipeline; no Discord."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import get_args

import aiohttp
import pydantic

from bot import images, masks
from bot.config import Settings
from bot.downloads import fetch
from bot.fal import FalQueueClient
from bot.fal_models import FalHandle, FalJobError, SegmentInput, SegmentOutput, fal_input
from bot.intake import estimate_cost
from bot.models import InpaintOptions, MaskRegion
from bot.progress import usd

log = logging.getLogger(__name__)

SEGMENT_INPUT_NAME = "segment-input.jpg"


def add_arguments(job: argparse.ArgumentParser) -> None:
    job.add_argument("--image", required=True)
    sources = job.add_argument_group("the area to repaint (one of these; default: the image's transparent areas)")
    sources.add_argument("--mask", help="a mask file: white = repaint, black = keep")
    sources.add_argument("--mask-prompt", "--mask_prompt", dest="mask_prompt", help='words, like "the sky"')
    sources.add_argument("--box", help="x1,y1,x2,y2 in percent of the width and height, like 25,10,75,60")
    sources.add_argument("--region", choices=get_args(MaskRegion))
    job.add_argument("--prompt", required=True)
    job.add_argument("--out", required=True, help="folder for the results")
    job.add_argument("--strength", type=float, default=0.85)
    job.add_argument("--num-images", "--num_images", dest="num_images", type=int, default=1, choices=range(1, 5))
    job.add_argument("--num-inference-steps", "--num_inference_steps", dest="num_inference_steps", type=int, default=28)
    job.add_argument("--guidance-scale", "--guidance_scale", dest="guidance_scale", type=float, default=3.5)
    job.add_argument("--seed", type=int)
    job.add_argument(
        "--output-format", "--output_format", dest="output_format", choices=("jpeg", "png"), default="jpeg"
    )
    job.add_argument("--invert-mask", "--invert_mask", dest="invert_mask", action="store_true")
    job.add_argument("--mask-grow", "--mask_grow", dest="mask_grow", type=int, default=0, help="px, 0 to 128")
    job.add_argument(
        "--mask-feather", "--mask_feather", dest="mask_feather", type=int, default=8, help="px, 0 to 64 (default 8)"
    )


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
    try:
        options = InpaintOptions(
            prompt=args.prompt.strip(),
            strength=args.strength,
            num_images=args.num_images,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
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


def _progress(text: str) -> None:
    sys.stderr.write(f"\r\x1b[2K{text}")
    sys.stderr.flush()


def _note(text: str) -> None:
    print(text, file=sys.stderr)


async def inpaint_once(
    settings: Settings,
    http: aiohttp.ClientSession,
    args: argparse.Namespace,
    options: InpaintOptions,
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
    handle, _ = await fal.submit(fal_input(options, image_url, mask_url))
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
