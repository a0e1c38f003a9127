"""Masks without a file, grow and feather, the crop around the mask and the composite: pure Pillow, no I/O."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageChops, ImageFilter

from bot.config import LimitSettings
from bot.errors import InputError
from bot.models import InpaintOptions, MaskRegion
from bot.progress import member_text

MIN_CROP_PADDING_PX = 32  # SPEC 11: at least 32 px around the mask's bounding box
NEARLY_ALL = 0.9  # a padded crop covering this share of the image's area sends the whole image instead
MIN_SENT_MEGAPIXELS = 0.5  # SPEC 11: a small crop is scaled up to at least this
BOX_FORM = "box must be x1,y1,x2,y2 in percent, like 25,10,75,60"
TINT = (255, 0, 200)  # the preview's colour for the area to repaint
TINT_OPACITY = 0.45
PREVIEW_QUALITY = 85
TILE_PX = 256  # grow and feather work tile by tile near the mask's edge

MAX_CROP_ASPECT = 4  # a crop's long side is at most this many times its short side, where the image allows
Crop = tuple[int, int, int, int]  # left, top, right, bottom in pixels; right and bottom exclusive


class MaskError(InputError):
    """A mask source cannot be used; the message says how to give it."""


@dataclass(frozen=True)
class Box:
    """A rectangle in percent of the width and height of the image as displayed (after EXIF orientation)."""

    x1: float
    y1: float
    x2: float
    y2: float

    def __str__(self) -> str:
        return ",".join(f"{value:g}" for value in (self.x1, self.y1, self.x2, self.y2))


@dataclass(frozen=True)
class MaskSource:
    """Where a job's mask comes from (SPEC 11): exactly one per job; build it with ``mask_source``."""

    kind: Literal["file", "alpha", "box", "region", "words"]
    box: Box | None = None
    region: MaskRegion | None = None
    words: str | None = None  # with kind "words", the mask bytes given to prepare are fal's segmentation

    def __post_init__(self) -> None:
        given = {"box": self.box is not None, "region": self.region is not None, "words": self.words is not None}
        if any(present != (self.kind == name) for name, present in given.items()):
            raise ValueError(f"a MaskSource of kind {self.kind!r} takes exactly its own field")


def mask_source(options: InpaintOptions, *, has_file: bool) -> MaskSource:
    """The one mask source that the options and the attachment name; none of them means the image's transparency.

    Raises:
        MaskError: two sources at once, or a box that cannot be read.
    """
    named = [
        name
        for name, given in (
            ("mask", has_file),
            ("mask_prompt", options.mask_prompt is not None),
            ("box", options.box is not None),
            ("region", options.region is not None),
        )
        if given
    ]
    if len(named) > 1:
        listed = ", ".join(named[:-1]) + f" and {named[-1]}"
        raise MaskError(f"Choose the area to repaint one way only: you gave {listed}.")
    if options.mask_prompt is not None:
        return MaskSource("words", words=options.mask_prompt)
    if options.box is not None:
        return MaskSource("box", box=parse_box(options.box))
    if options.region is not None:
        return MaskSource("region", region=options.region)
    return MaskSource("file" if has_file else "alpha")


def parse_box(text: str) -> Box:
    """``x1,y1,x2,y2`` in percent (spaces, "%" signs and decimals allowed) as a Box.

    Raises:
        MaskError: not four numbers, a number outside 0 to 100, or the edges in the wrong order.
    """
    stripped = text.strip()
    if not stripped:
        raise MaskError(f"The box is empty: {BOX_FORM}.")
    parts = [part.strip().removesuffix("%").strip() for part in re.split(r"," if "," in stripped else r"\s+", stripped)]
    if len(parts) != 4:
        raise MaskError(f"The box has {len(parts)} numbers instead of 4: {BOX_FORM}.")
    values: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            shown = f'"{part[:20]}"' if part else "an empty place"
            raise MaskError(f"The box has {shown} where a number should be: {BOX_FORM}.")
        if not 0 <= value <= 100:
            raise MaskError(f"The box's {part} is outside 0 to 100: {BOX_FORM}.")
        values.append(value)
    x1, y1, x2, y2 = values
    if x1 >= x2:
        raise MaskError(f"The box's right edge x2 ({x2:g}) must be greater than its left edge x1 ({x1:g}): {BOX_FORM}.")
    if y1 >= y2:
        raise MaskError(f"The box's bottom edge y2 ({y2:g}) must be greater than its top edge y1 ({y1:g}): {BOX_FORM}.")
    return Box(x1, y1, x2, y2)


def box_mask(size: tuple[int, int], box: Box) -> Image.Image:
    """A 0/255 "L" mask of ``box`` (left and top edges rounded down, right and bottom up; at least one pixel)."""
    width, height = size
    # the tolerance keeps 29 % of 100 px at 29 px although 29 / 100 * 100 is 28.999…
    left = min(max(math.floor(box.x1 * width / 100 + 1e-9), 0), width - 1)
    top = min(max(math.floor(box.y1 * height / 100 + 1e-9), 0), height - 1)
    right = max(min(math.ceil(box.x2 * width / 100 - 1e-9), width), left + 1)
    bottom = max(min(math.ceil(box.y2 * height / 100 - 1e-9), height), top + 1)
    mask = Image.new("L", size, 0)
    mask.paste(255, (left, top, right, bottom))
    return mask


def region_mask(size: tuple[int, int], region: MaskRegion) -> Image.Image:
    """A 0/255 "L" mask of a named part; of an odd height (width) the middle row (column) is in the top (left) half."""
    width, height = size
    middle_x, middle_y = (width + 1) // 2, (height + 1) // 2
    if region == "center":
        return box_mask(size, Box(25, 25, 75, 75))
    area = {
        "top": (0, 0, width, middle_y),
        "bottom": (0, middle_y, width, height),
        "left": (0, 0, middle_x, height),
        "right": (middle_x, 0, width, height),
        "everything": (0, 0, width, height),
    }[region]
    mask = Image.new("L", size, 0)
    mask.paste(255, area)
    return mask


def threshold(im: Image.Image, level: int) -> Image.Image:
    """0/255 mode "L": 255 where the value is at least ``level``."""
    return im.point([255 if value >= level else 0 for value in range(256)])


def resize_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize a 0/255 mask and threshold it again at half, so edges stay smooth and no grey reaches fal."""
    soft = mask.resize(size, Image.Resampling.BILINEAR)
    resized = threshold(soft, 128)
    if resized.histogram()[255] == 0:  # strokes thinner than a pixel of the smaller mask must not vanish
        resized = threshold(soft, 1)
    return resized


def _around(mask: Image.Image, reach: float) -> Crop | None:
    """The mask's bounding box widened by ``reach`` pixels and clamped to the image; None for an empty mask."""
    bbox = mask.getbbox()
    if bbox is None:
        return None
    extra = math.ceil(reach)
    left, top, right, bottom = bbox
    return max(0, left - extra), max(0, top - extra), min(mask.width, right + extra), min(mask.height, bottom + extra)


def _dilate(mask: Image.Image, radius: float) -> Image.Image:
    """Every pixel within Euclidean ``radius`` of a 255 pixel set to 255: a disc, built row by row.

    The disc is the union, over its rows dy, of the mask widened by that row's half-width and moved by dy; each
    widening reuses the last (``paste`` with the mask as its own stencil), so the cost grows with the radius, not
    with its square, and nothing wraps around the edges.
    """
    reach = math.floor(radius)
    out = mask.copy()
    row, half_width = mask, 0  # the mask widened by half_width pixels to each side
    for dy in range(reach, -1, -1):  # from the disc's narrow ends to its widest row
        needed = math.floor(math.sqrt(radius * radius - dy * dy) + 1e-9)
        while half_width < needed:
            step = min(needed - half_width, 2 * half_width + 1)  # larger steps would leave gaps
            wider = row.copy()
            wider.paste(255, (step, 0), row)
            wider.paste(255, (-step, 0), row)
            row, half_width = wider, half_width + step
        out.paste(255, (0, dy), row)
        if dy:
            out.paste(255, (0, -dy), row)
    return out


def _local(mask: Image.Image, reach: int, work: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """``work`` over the whole mask, done only where its result can differ from the mask.

    ``work`` must depend on the mask within ``reach`` pixels only, give 0 where no mask pixel is that near and 255 on
    the mask. Tiles with no mask within reach stay 0, tiles inside the mask are 255; the others are worked on one by
    one (with their surroundings) unless working on the mask's bounding box plus ``reach`` in one piece is cheaper.
    """
    out = Image.new("L", mask.size, 0)
    area = _around(mask, reach)
    if area is None:
        return out
    pending: list[tuple[Crop, Crop]] = []  # (tile, the tile plus reach)
    for top in range(area[1], area[3], TILE_PX):
        for left in range(area[0], area[2], TILE_PX):
            tile = (left, top, min(left + TILE_PX, area[2]), min(top + TILE_PX, area[3]))
            near = (
                max(0, left - reach),
                max(0, top - reach),
                min(mask.width, tile[2] + reach),
                min(mask.height, tile[3] + reach),
            )
            if mask.crop(near).getextrema()[1] == 0:
                continue
            if mask.crop(tile).getextrema()[0] == 255:
                out.paste(255, tile)
                continue
            pending.append((tile, near))
    if sum(_pixels(near) for _, near in pending) >= _pixels(area):
        out.paste(work(mask.crop(area)), area[:2])
        return out
    for tile, near in pending:
        done = work(mask.crop(near))
        offset = (tile[0] - near[0], tile[1] - near[1])
        out.paste(done.crop((*offset, offset[0] + tile[2] - tile[0], offset[1] + tile[3] - tile[1])), tile[:2])
    return out


def _pixels(box: Crop) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def grow(mask: Image.Image, px: int) -> Image.Image:
    """A 0/255 mask dilated by ``px`` pixels (Euclidean), worked on only near the mask's edge."""
    if px <= 0:
        return mask.copy()
    return _local(mask, px, lambda part: _dilate(part, px))


def soft_edge(mask: Image.Image, feather_px: int) -> Image.Image:
    """The composite's alpha for a 0/255 mask: 255 on the mask, 0 farther than ``feather_px`` from it, a ramp between.

    The ramp is the mask widened by half the feather and box-blurred by the other half: along a straight edge it
    falls linearly from 255 to 255 / (feather + 1) at ``feather_px``; the disc of ``feather_px`` cuts it to 0 beyond.
    """
    if feather_px <= 0:
        return mask.copy()
    half = feather_px / 2

    def alpha(part: Image.Image) -> Image.Image:
        ramp = _dilate(part, half).filter(ImageFilter.BoxBlur(half))
        return ImageChops.lighter(ImageChops.darker(ramp, _dilate(part, feather_px)), part)

    return _local(mask, feather_px + 1, alpha)  # the blur reads ceil(half) past the widened mask


def crop_box(mask: Image.Image, *, padding: float, margin_px: int, crop_to_mask: bool) -> Crop:
    """The part of the image to send fal: the mask's bounding box plus padding, or the whole image.

    Each axis is padded by the largest of ``padding`` × the box's size on that axis, 32 px and ``margin_px`` (pass
    the feather, so that the whole seam lies inside the crop), then clamped to the image. The whole image when
    ``crop_to_mask`` is off, the mask is empty, or the crop would cover 90 % of the image or more.
    """
    width, height = mask.size
    whole = (0, 0, width, height)
    bbox = mask.getbbox()
    if not crop_to_mask or bbox is None:
        return whole
    left, top, right, bottom = bbox
    pad_x = max(math.ceil(padding * (right - left)), MIN_CROP_PADDING_PX, margin_px)
    pad_y = max(math.ceil(padding * (bottom - top)), MIN_CROP_PADDING_PX, margin_px)
    crop = (max(0, left - pad_x), max(0, top - pad_y), min(width, right + pad_x), min(height, bottom + pad_y))
    crop = _within_aspect(crop, width, height)
    if (crop[2] - crop[0]) * (crop[3] - crop[1]) >= NEARLY_ALL * width * height:
        return whole
    return crop


def _widen(low: int, high: int, size: int, limit: int) -> tuple[int, int]:
    """The span ``low``..``high`` grown evenly to ``size`` (at most ``limit``), shifted to stay within 0..limit."""
    size = min(size, limit)
    low = max(0, low - (size - (high - low)) // 2)
    high = low + size
    if high > limit:
        low, high = limit - size, limit
    return low, high


def _within_aspect(crop: Crop, width: int, height: int) -> Crop:
    """A thin crop (a stroke along an edge) widened on its short side to at most MAX_CROP_ASPECT to one, as far as
    the image allows: fal paints a sliver of context badly, and the short side would be scaled to a few pixels."""
    left, top, right, bottom = crop
    crop_width, crop_height = right - left, bottom - top
    if crop_width > MAX_CROP_ASPECT * crop_height:
        top, bottom = _widen(top, bottom, math.ceil(crop_width / MAX_CROP_ASPECT), height)
    elif crop_height > MAX_CROP_ASPECT * crop_width:
        left, right = _widen(left, right, math.ceil(crop_height / MAX_CROP_ASPECT), width)
    return left, top, right, bottom


def sent_size(
    width: int, height: int, max_megapixels: float, min_megapixels: float = MIN_SENT_MEGAPIXELS
) -> tuple[int, int]:
    """The size fal receives: unchanged between the two limits, else scaled (same aspect) to multiples of 8, >= 8.

    Pass ``min_megapixels=0`` for the whole image: only crops are scaled up (SPEC 3 and 11).
    """
    pixels = width * height
    most = max_megapixels * 1e6
    least = min(min_megapixels, max_megapixels) * 1e6
    if pixels > most:
        scale = math.sqrt(most / pixels)
        return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)
    if pixels < least:
        scale = math.sqrt(least / pixels)
        up = (max(8, math.ceil(width * scale / 8) * 8), max(8, math.ceil(height * scale / 8) * 8))
        if up[0] * up[1] <= most:
            return up
        return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)
    return width, height


def nothing_selected(source: MaskSource, *, invert: bool) -> str:
    """What to tell the member when the mask from ``source``, after invert_mask, selects nothing."""
    if not invert:
        return "The mask selects nothing: paint the area to repaint in white (or use invert_mask)."
    if source.kind == "box":
        return f"With invert_mask on, the box {source.box} leaves nothing to repaint: use a smaller box or turn it off."
    if source.kind == "region":
        return (
            f"With invert_mask on, the region {source.region} leaves nothing to repaint: choose another or turn it off."
        )
    if source.kind == "words":
        words = member_text(source.words or "")
        return f'With invert_mask on, nothing is left to repaint: "{words}" matched the whole image.'
    return "With invert_mask on, the mask selects nothing: leave the area to repaint black, or turn invert_mask off."


@dataclass(frozen=True)
class SendPlan:
    crop: Crop  # the part of the image sent to fal
    size: tuple[int, int]  # the crop's size at fal
    notes: tuple[str, ...]  # for the member


def plan_send(mask: Image.Image, *, limits: LimitSettings, margin_px: int) -> SendPlan:
    """What fal receives for a mask at the image's full size: the crop (SPEC 11) or the whole image (SPEC 3)."""
    width, height = mask.size
    crop = crop_box(mask, padding=limits.crop_padding, margin_px=margin_px, crop_to_mask=limits.crop_to_mask)
    crop_width, crop_height = crop[2] - crop[0], crop[3] - crop[1]
    sent = sent_size(width, height, limits.max_megapixels, min_megapixels=0)  # SPEC 3: the whole image is not scaled up
    if (crop_width, crop_height) != (width, height):
        crop_sent = sent_size(crop_width, crop_height, limits.max_megapixels)
        scaled_up = crop_sent[0] * crop_sent[1] > crop_width * crop_height
        # a crop scaled up past the whole image would cost more than the whole: then the whole goes
        if not (scaled_up and crop_sent[0] * crop_sent[1] >= sent[0] * sent[1]):
            note = (
                f"Only the area around the mask ({crop_width}×{crop_height}) is sent to fal; "
                "the rest of your photo is kept as it is."
            )
            return SendPlan(crop, crop_sent, (note,))
        crop = (0, 0, width, height)
    if sent == (width, height):
        return SendPlan(crop, sent, ())
    cap = limits.max_megapixels
    cap_text = f"{cap:.1f}" if round(cap, 1) == cap else f"{cap:g}"
    note = (
        f"Your image was downscaled from {width}×{height} to {sent[0]}×{sent[1]} "
        f"(limit {cap_text} MP); results come back at {width}×{height}."
    )
    return SendPlan(crop, sent, (note,))


def composite(original: Image.Image, result: Image.Image, crop: Crop, alpha: Image.Image) -> Image.Image:
    """``original`` (RGB) with fal's ``result`` for ``crop``, resized to the crop, pasted in where ``alpha`` says.

    ``alpha`` ("L", 255 = fal's pixel) is either at the crop's size or at the original's; wherever it is 0 the
    original's pixel is kept byte for byte. The original is not changed.
    """
    left, top, right, bottom = crop
    size = (right - left, bottom - top)
    if alpha.size == original.size and size != original.size:
        alpha = alpha.crop(crop)
    if alpha.size != size:
        raise ValueError(f"alpha is {alpha.size}, neither the crop's {size} nor the original's {original.size}")
    patch = result if result.mode == "RGB" else result.convert("RGB")
    if patch.size != size:
        patch = patch.resize(size, Image.Resampling.LANCZOS)
    out = original.copy()
    out.paste(patch, (left, top), alpha)
    return out


def overlay(picture: Image.Image, mask: Image.Image, max_side: int = 512) -> bytes:
    """A small JPEG of the picture with the area to repaint tinted and outlined, for the reply."""
    scale = min(1.0, max_side / max(picture.size))
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    small = picture.convert("RGB")
    if small.size != size:
        small = small.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    area = resize_mask(mask, size) if mask.size != size else mask
    small.paste(Image.blend(small, Image.new("RGB", size, TINT), TINT_OPACITY), (0, 0), area)
    outline = ImageChops.subtract(area.filter(ImageFilter.MaxFilter(3)), area.filter(ImageFilter.MinFilter(3)))
    small.paste(TINT, (0, 0), outline)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=PREVIEW_QUALITY)
    return out.getvalue()
