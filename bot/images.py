"""From the member's files to what fal is sent, and from fal's result back to the member's photo at full size:
synchronous Pillow code, bytes in and bytes out, no other I/O."""

from __future__ import annotations

import base64
import io
import logging
import zlib
from dataclasses import dataclass

from PIL import Image, ImageOps

from bot import masks
from bot.config import LimitSettings
from bot.decode import ALPHA_OPAQUE, Decoded, ImageError, mask_repaint, open_image, split_alpha
from bot.models import OutputFormat
from bot.progress import member_text

log = logging.getLogger(__name__)

MIN_SIDE = 16  # smaller inputs are not worth a paid request, and some encoders refuse them
ASPECT_TOLERANCE = 0.01  # a mask within 1% of the image's aspect ratio is resized to it (SPEC 3)
UPLOAD_QUALITIES = (90, 80, 70, 60, 50)
UPLOAD_SHRINK = 0.75
UPLOAD_MIN_SIDE = 64


@dataclass(frozen=True)
class PreparedInput:
    image: bytes  # RGB JPEG (quality 95) of the crop at sent_width × sent_height, for fal's image_url
    image_mime: str  # "image/jpeg"
    mask: bytes  # PNG, mode "L", only 0 and 255, of the crop at sent_width × sent_height; 255 = repaint
    width: int  # the input's size after EXIF orientation; results are delivered at this size
    height: int
    sent_width: int  # the size sent to fal: the crop, scaled to the megapixel limits (SPEC 11)
    sent_height: int
    mask_fraction: float  # share of the whole image's pixels to repaint, 0 < f <= 1
    notes: tuple[str, ...]  # for the member: downscaling, resized mask, whole image repainted, ...
    crop: masks.Crop  # the part of the input (at width × height) that was sent; (0, 0, width, height) for all of it
    full_mask: bytes  # PNG, "L", 0/255, at width × height, after invert_mask and mask_grow: what finish_output uses
    preview: bytes  # small JPEG of the image with the area to repaint tinted, for the reply


@dataclass(frozen=True)
class SegmentationInput:
    image: bytes  # RGB JPEG (quality 95) within limits.max_megapixels, for the segmentation endpoint's image_url
    image_mime: str  # "image/jpeg"
    width: int  # the input's size after EXIF orientation
    height: int


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _same_shape(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return abs(a[0] * b[1] - b[0] * a[1]) <= ASPECT_TOLERANCE * b[0] * a[1]


def _check_shape(mask_size: tuple[int, int], size: tuple[int, int], stored_size: tuple[int, int]) -> None:
    """Raises: ImageError when the mask's aspect ratio differs from the image's by more than 1%."""
    if _same_shape(mask_size, size):
        return
    message = (
        f"The mask is {mask_size[0]}×{mask_size[1]} but the image is {size[0]}×{size[1]}; "
        "they must have the same shape (the same aspect ratio)."
    )
    if stored_size != size and _same_shape(mask_size, stored_size):
        message += (
            f" The image's EXIF orientation turns it to {size[0]}×{size[1]}: "
            "draw the mask on the image as it is displayed."
        )
    raise ImageError(message)


def _encode(im: Image.Image, output_format: OutputFormat, *, quality: int = 92) -> bytes:
    out = io.BytesIO()
    if output_format == "jpeg":
        im.save(out, "JPEG", quality=quality, optimize=True)
    else:
        # zlib's RLE strategy on PNG-filtered photos: about as small as the default, 2 to 4 times faster; with RLE
        # the level hardly changes the size (same bytes at 1 and 6 on a 12 MP photo) but costs a third more time
        im.save(out, "PNG", optimize=False, compress_level=1, compress_type=zlib.Z_RLE)
    return out.getvalue()


def _accepted(limits: LimitSettings) -> LimitSettings:
    """The limits for a photo accepted already: an admin who lowers a limit later must not fail a paid job."""
    return limits.model_copy(update={"max_input_bytes": 2**62, "max_decode_pixels": 2**62})


class NoMaskError(ImageError):
    """No mask source at all, and an image without transparency: nothing says what to repaint."""


PAINT_MAX_SIDE = 2048  # the picture the mask painter shows: enough to paint on a phone; its mask is scaled up


def paint_canvas(image: bytes, *, limits: LimitSettings) -> tuple[bytes, int, int]:
    """The member's image as the mask painter shows it (oriented, RGB, its long side at most PAINT_MAX_SIDE: the
    same aspect, so the painted mask is resized to the image like any mask file; SPEC 3), and the image's size.

    Raises:
        ImageError: the image cannot be used.
    """
    _, picture, _ = _member_image(image, limits)
    width, height = picture.size
    scale = min(1.0, PAINT_MAX_SIDE / max(picture.size))
    if scale < 1:
        picture = picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.Resampling.LANCZOS
        )
    return _encode(picture, "jpeg", quality=90), width, height


def _member_image(image: bytes, limits: LimitSettings) -> tuple[Decoded, Image.Image, Image.Image | None]:
    """The member's image decoded as prepare and finish_output both read it: RGB, oriented, and its alpha.

    Raises:
        ImageError: the image cannot be used.
    """
    source = open_image(image, "image", max_pixels=limits.max_decode_pixels, max_bytes=limits.max_input_bytes)
    picture, alpha = split_alpha(source.image, "image")
    if picture.width < MIN_SIDE or picture.height < MIN_SIDE:
        raise ImageError(
            f"The image is {picture.width}×{picture.height} pixels; it must be at least {MIN_SIDE}×{MIN_SIDE}. "
            "Please upload a larger image."
        )
    return source, picture, alpha


def _repaint(
    source: masks.MaskSource,
    mask: bytes | None,
    decoded: Decoded,
    size: tuple[int, int],
    alpha: Image.Image | None,
    *,
    limits: LimitSettings,
    notes: list[str],
) -> Image.Image:
    """The 0/255 mask at the image's size, from the given source, before invert_mask.

    Raises:
        ImageError: the mask cannot be read, has another shape, or (words, transparency) selects nothing.
    """
    if source.kind == "box" and source.box is not None:
        return masks.box_mask(size, source.box)
    if source.kind == "region" and source.region is not None:
        return masks.region_mask(size, source.region)
    if source.kind == "alpha":
        repaint = alpha.point([255 if a < ALPHA_OPAQUE else 0 for a in range(256)]) if alpha is not None else None
        if repaint is None or repaint.histogram()[255] == 0:
            raise NoMaskError(
                "No mask was given and the image has no transparent areas. Attach a mask (white = repaint, "
                "black = keep) or erase the area to repaint to transparency in your image."
            )
        return repaint
    assert mask is not None
    if source.kind == "words":
        try:
            found = open_image(mask, "mask", max_pixels=limits.max_decode_pixels, max_bytes=limits.max_output_bytes)
            repaint = mask_repaint(found.image, limits.mask_threshold)
        except ImageError as exc:
            log.warning("fal's segmentation mask was refused: %s", exc.message)
            raise ImageError("fal's segmentation returned a mask that could not be read.") from exc
        if repaint.size != size:  # fal saw our downscaled copy: its aspect may differ by the rounding to 8 px
            repaint = masks.resize_mask(repaint, size)
        if repaint.histogram()[255] == 0:
            words = member_text(source.words or "")  # shown as typed: no Markdown, no pings
            raise ImageError(f'Nothing matched "{words}" in the image; try other words, a box or a region.')
        return repaint
    drawn = open_image(mask, "mask", max_pixels=limits.max_decode_pixels, max_bytes=limits.max_input_bytes)
    repaint = mask_repaint(drawn.image, limits.mask_threshold)
    if repaint.size != size:
        _check_shape(repaint.size, size, decoded.stored_size)
        notes.append(f"The mask ({repaint.width}×{repaint.height}) was resized to the image's {size[0]}×{size[1]}.")
        repaint = masks.resize_mask(repaint, size)
    return repaint


def prepare(
    image: bytes,
    mask: bytes | None,
    *,
    invert: bool,
    limits: LimitSettings,
    source: masks.MaskSource | None = None,
    grow_px: int = 0,
    feather_px: int = 0,
    accepted: bool = False,
) -> PreparedInput:
    """Validate the member's image and mask and build what fal receives (SPEC sections 3 and 11); ``accepted``: the
    image passed once already (a mask found later), so today's size limits are not applied to it again.

    ``source`` defaults to the attachment ``mask`` if given, else the image's transparency; with a box or a region
    ``mask`` must be None, with words it is fal's segmentation output. ``feather_px`` only widens the crop.

    Raises:
        ImageError: any input that cannot be used; the message says what to do.
    """
    source = source or masks.MaskSource("file" if mask is not None else "alpha")
    if (mask is not None) != (source.kind in ("file", "words")):
        raise ValueError(f"a {source.kind} mask source {'takes' if mask is None else 'takes no'} mask bytes")
    notes: list[str] = []
    decoded, picture, alpha = _member_image(image, _accepted(limits) if accepted else limits)
    width, height = picture.size
    if decoded.multi_frame:
        notes.append("Your image has several frames; only the first one is used.")
    repaint = _repaint(source, mask, decoded, picture.size, alpha, limits=limits, notes=notes)
    if invert:
        repaint = ImageOps.invert(repaint)
    repaint = masks.grow(repaint, grow_px)
    selected = repaint.histogram()[255]
    if selected == 0:
        raise ImageError(masks.nothing_selected(source, invert=invert))
    if selected == width * height:
        notes.append("The mask selects the whole image, so all of it is repainted.")

    plan = masks.plan_send(repaint, limits=limits, margin_px=feather_px)
    crop, sent = plan.crop, plan.size
    crop_size = (crop[2] - crop[0], crop[3] - crop[1])
    notes.extend(plan.notes)
    sent_picture, sent_repaint = (
        (picture, repaint) if crop_size == (width, height) else (picture.crop(crop), repaint.crop(crop))
    )
    if sent != crop_size:
        sent_picture = sent_picture.resize(sent, Image.Resampling.LANCZOS)
        sent_repaint = masks.resize_mask(sent_repaint, sent)
    return PreparedInput(
        image=_encode(sent_picture, "jpeg", quality=95),
        image_mime="image/jpeg",
        mask=_png(sent_repaint),
        width=width,
        height=height,
        sent_width=sent[0],
        sent_height=sent[1],
        mask_fraction=selected / (width * height),
        notes=tuple(notes),
        crop=crop,
        full_mask=_png(repaint),
        preview=masks.overlay(picture, repaint),
    )


def prepare_for_segmentation(image: bytes, *, limits: LimitSettings) -> SegmentationInput:
    """Validate the member's image as prepare does and build what the segmentation endpoint receives (SPEC 11).

    Raises:
        ImageError: the image cannot be used (the same refusals as prepare).
    """
    _, picture, _ = _member_image(image, limits)
    sent = masks.sent_size(*picture.size, limits.max_megapixels, min_megapixels=0)
    scaled = picture.resize(sent, Image.Resampling.LANCZOS) if sent != picture.size else picture
    return SegmentationInput(_encode(scaled, "jpeg", quality=95), "image/jpeg", picture.width, picture.height)


def _png(mask: Image.Image) -> bytes:
    out = io.BytesIO()
    mask.save(out, "PNG")
    return out.getvalue()


def finish_output(
    data: bytes,
    *,
    width: int,
    height: int,
    output_format: OutputFormat,
    limits: LimitSettings,
    original: bytes | None = None,
    crop: masks.Crop | None = None,
    full_mask: bytes | None = None,
    feather_px: int = 0,
) -> bytes:
    """Decode fal's result and deliver it at the input's size in the requested format.

    With the member's ``original`` and the prepared ``full_mask`` (and ``crop``, default all of it), the result is
    pasted into the original inside the mask feathered by ``feather_px``; everything else keeps the original's pixels.

    Raises:
        ImageError: fal's file is not a readable image within the limits.
    """
    try:
        result = open_image(data, "result", max_pixels=limits.max_decode_pixels, max_bytes=limits.max_output_bytes)
        picture, _ = split_alpha(result.image, "result")
    except ImageError as exc:
        log.warning("fal's result image was refused: %s", exc.message)
        raise ImageError("fal returned an image that could not be read.") from exc
    if original is not None and full_mask is not None:
        with Image.open(io.BytesIO(full_mask), formats=["PNG"]) as stored:
            mask = stored.convert("L")
        _, base, _ = _member_image(original, _accepted(limits))  # the same path as prepare: the same pixels
        if base.size != (width, height) or mask.size != base.size:
            raise ValueError(f"original {base.size} and mask {mask.size} do not match the job's {width}×{height}")
        if mask.getextrema() != (255, 255):  # with all of it repainted, the result is delivered as it is
            alpha = masks.soft_edge(mask, feather_px)
            return _encode(masks.composite(base, picture, crop or (0, 0, width, height), alpha), output_format)
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    return _encode(picture, output_format)


def fit_upload(data: bytes, *, limit_bytes: int, output_format: OutputFormat) -> tuple[bytes, OutputFormat]:
    """The file unchanged if it fits Discord's upload limit, else a smaller JPEG (best effort below 64 px).

    Raises:
        ImageError: the file is not a readable image.
    """
    if len(data) <= limit_bytes:
        return data, output_format
    picture, _ = split_alpha(open_image(data, "result", max_pixels=2**31, max_bytes=None).image, "result")
    smallest = data
    qualities = UPLOAD_QUALITIES if output_format == "png" else UPLOAD_QUALITIES[1:]  # ours are already at 92
    for quality in qualities:
        smallest = _encode(picture, "jpeg", quality=quality)
        if len(smallest) <= limit_bytes:
            return smallest, "jpeg"
    scale = UPLOAD_SHRINK
    while min(picture.width, picture.height) * scale >= UPLOAD_MIN_SIDE:
        size = (round(picture.width * scale), round(picture.height * scale))
        smallest = _encode(picture.resize(size, Image.Resampling.LANCZOS), "jpeg", quality=UPLOAD_QUALITIES[2])
        if len(smallest) <= limit_bytes:
            return smallest, "jpeg"
        scale *= UPLOAD_SHRINK
    log.warning("a %d×%d result does not fit %d bytes even at its smallest", picture.width, picture.height, limit_bytes)
    return smallest, "jpeg"
