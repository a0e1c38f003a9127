"""Decode, orient, mask, resize and encode images: synchronous Pillow code, bytes in and bytes out, no other I/O."""

from __future__ import annotations

import base64
import io
import logging
import math
import struct
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError, features

from bot.config import LimitSettings
from bot.errors import InputError
from bot.models import OutputFormat

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_SIDE = 16  # smaller inputs are not worth a paid request, and some encoders refuse them
ASPECT_TOLERANCE = 0.01  # a mask within 1% of the image's aspect ratio is resized to it (SPEC 3)
ALPHA_OPAQUE = 128  # alpha below 50% counts as transparent (SPEC 3)
UPLOAD_QUALITIES = (90, 80, 70, 60, 50)
UPLOAD_SHRINK = 0.75
UPLOAD_MIN_SIDE = 64
ACCEPTED = "PNG, JPEG, WebP, GIF, AVIF, BMP or TIFF"
_PIL_FORMATS = {name: name.upper() for name in ("png", "jpeg", "webp", "gif", "avif", "bmp", "tiff")}
_MULTI_FRAME_FORMATS = frozenset({"PNG", "GIF", "WEBP", "AVIF", "TIFF"})  # not MPO: its second frame is a depth map
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# What Pillow raises for malformed files in open(), load() and the EXIF reader (the AVIF decoder raises
# RuntimeError); anything else is our bug.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, RuntimeError)
# Pillow's own bomb check (at 1× warning / 2× error of the global MAX_IMAGE_PIXELS) can fire before ours.
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


class ImageError(InputError):
    """An image or mask cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class PreparedInput:
    image: bytes  # RGB JPEG (quality 95) at sent_width × sent_height, for fal's image_url
    image_mime: str  # "image/jpeg"
    mask: bytes  # PNG, mode "L", only 0 and 255, at sent_width × sent_height; 255 = repaint
    width: int  # the input's size after EXIF orientation; results are delivered at this size
    height: int
    sent_width: int  # the size sent to fal, after the megapixel cap
    sent_height: int
    mask_fraction: float  # share of pixels to repaint, 0 < f <= 1
    notes: tuple[str, ...]  # for the member: downscaling, resized mask, whole image repainted, ...


@dataclass(frozen=True)
class _Decoded:
    image: Image.Image  # the first frame, loaded, EXIF orientation applied, mode as stored
    stored_size: tuple[int, int]  # before EXIF orientation
    multi_frame: bool


def sniff_format(data: bytes) -> str | None:
    """The format named by the file's magic bytes, if it is one we accept."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if data[4:8] == b"ftyp" and _is_avif_ftyp(data):
        return "avif"
    return None


def _is_avif_ftyp(data: bytes) -> bool:
    # ISO-BMFF ftyp box: size, "ftyp", major brand, minor version, compatible brands; HEIC shares the container
    box_size = min(int.from_bytes(data[0:4], "big"), len(data), 256)
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, box_size - 3, 4)}
    return bool(brands & {b"avif", b"avis"})


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _megabytes(size: int) -> str:
    return f"{round(size / MiB, 1):g}"


def _megapixels(pixels: float) -> str:
    return f"{round(pixels / 1e6, 1):g}"


def _cap_text(max_megapixels: float) -> str:
    return f"{max_megapixels:.1f}" if round(max_megapixels, 1) == max_megapixels else f"{max_megapixels:g}"


def _too_large(what: str, size: tuple[int, int] | None, max_pixels: int) -> ImageError:
    if size is None:
        return ImageError(
            f"The {what} is larger than the {_megapixels(max_pixels)} MP limit; please upload a smaller version."
        )
    width, height = size
    return ImageError(
        f"The {what} is {width}×{height} pixels ({_megapixels(width * height)} MP); "
        f"the limit is {_megapixels(max_pixels)} MP. Please upload a smaller version."
    )


def _damaged(what: str, label: str, exc: BaseException) -> ImageError:
    if isinstance(exc, UnidentifiedImageError):
        reason = f"not a readable {label} file"  # Pillow's text holds the BytesIO repr
    else:
        lines = str(exc).strip().splitlines()
        reason = (lines[0].rstrip(".")[:100] if lines else "") or type(exc).__name__
    return ImageError(f"The {what} file is damaged or incomplete ({reason}); please upload it again.")


def _header_size(data: bytes, label: str) -> tuple[int, int] | None:
    """Width and height from the header alone, bypassing Pillow's global bomb check; None if unreadable."""
    factory, _ = Image.OPEN[label]
    try:
        with factory(io.BytesIO(data), "") as header:
            return header.size
    except (*_DECODE_ERRORS, *_BOMB_ERRORS):
        return None


def _open(data: bytes, what: str, *, max_pixels: int, max_bytes: int | None) -> _Decoded:
    """Check bytes, magic and header size, then decode the first frame and apply its EXIF orientation.

    Raises:
        ImageError: empty, too many bytes, not an accepted format, too many pixels, or damaged.
    """
    if not data:
        raise ImageError(f"The {what} file is empty (0 bytes); please upload it again.")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(
            f"The {what} file is {_megabytes(len(data))} MB; the limit is {_megabytes(max_bytes)} MB. "
            "Please upload a smaller file."
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(f"The {what} isn't a picture Discord/fal can read: upload a {ACCEPTED} file.")
    if fmt in ("webp", "avif") and not features.check(fmt):  # optional codecs of a Pillow build
        raise ImageError(f"This bot cannot read {fmt.upper()} files; please upload a PNG or JPEG instead.")
    label = _PIL_FORMATS[fmt]
    try:
        src = Image.open(io.BytesIO(data), formats=[label])  # reads the header only
    except _BOMB_ERRORS:
        size = _header_size(data, label)
        if size is not None and size[0] * size[1] <= max_pixels:  # limits.max_decode_pixels above Pillow's guard
            raise ImageError(
                f"The {what} is {size[0]}×{size[1]} pixels ({_megapixels(size[0] * size[1])} MP), more than "
                "the image library accepts; please upload a smaller version."
            ) from None
        raise _too_large(what, size, max_pixels) from None
    except _DECODE_ERRORS as exc:
        raise _damaged(what, label, exc) from exc
    with src:
        if src.width * src.height > max_pixels:
            raise _too_large(what, src.size, max_pixels)
        stored_size = src.size
        try:
            multi_frame = src.format in _MULTI_FRAME_FORMATS and bool(getattr(src, "is_animated", False))
            src.load()  # truncated files fail here: LOAD_TRUNCATED_IMAGES stays off
            if src.width * src.height > max_pixels:  # some plugins settle the size only while loading
                raise _too_large(what, src.size, max_pixels)
            oriented = ImageOps.exif_transpose(src)
        except _BOMB_ERRORS:
            raise _too_large(what, src.size, max_pixels) from None
        except _DECODE_ERRORS as exc:
            raise _damaged(what, label, exc) from exc
    return _Decoded(image=oriented, stored_size=stored_size, multi_frame=multi_frame)


def _to_8bit(im: Image.Image) -> Image.Image:
    """Greyscale of more than 8 bits, scaled (not clipped) to mode "L"."""
    if im.mode == "F":
        high = im.getextrema()[1]
        scale = 255.0 if isinstance(high, float) and high <= 1.0 else 1.0  # float files usually hold 0..1
        return im.point(lambda v: v * scale).convert("L")
    return im.convert("I").point(lambda v: v / 257).convert("L")  # 16-bit: 65535 -> 255


def _split_alpha(im: Image.Image, what: str) -> tuple[Image.Image, Image.Image | None]:
    """The picture as RGB and its alpha channel ("L"), or None when it has no transparency.

    Raises:
        ImageError: a colour mode Pillow cannot convert to RGB.
    """
    try:
        if im.mode in _SIXTEEN_BIT_MODES or im.mode == "F":
            return _to_8bit(im).convert("RGB"), None
        if im.mode in _ALPHA_MODES or "transparency" in im.info:  # palette and tRNS transparency live in info
            rgba = im.convert("RGBA")
            return rgba.convert("RGB"), rgba.getchannel("A")
        return im.convert("RGB"), None
    except ValueError as exc:
        raise ImageError(
            f"The {what} uses a colour mode ({im.mode}) that cannot be converted; save it as an RGB PNG or JPEG."
        ) from exc


def _threshold(im: Image.Image, level: int) -> Image.Image:
    """0/255 mode "L": 255 where the value is at least ``level``."""
    return im.point([255 if value >= level else 0 for value in range(256)])


def _mask_repaint(im: Image.Image, threshold: int) -> Image.Image:
    """255 where a mask asks for a repaint: the brightest channel at or above the threshold, and opaque."""
    if im.mode in ("1", "L") and "transparency" not in im.info:
        return _threshold(im.convert("L"), threshold)
    colour, alpha = _split_alpha(im, "mask")
    red, green, blue = colour.split()
    repaint = _threshold(ImageChops.lighter(ImageChops.lighter(red, green), blue), threshold)
    if alpha is not None:  # strokes on a transparent canvas: transparent means keep, whatever its colour
        repaint = ImageChops.darker(repaint, _threshold(alpha, ALPHA_OPAQUE))
    return repaint


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


def _resize_repaint(repaint: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize a 0/255 mask and threshold it again at half, so edges stay smooth and no grey reaches fal."""
    soft = repaint.resize(size, Image.Resampling.BILINEAR)
    resized = _threshold(soft, 128)
    if resized.histogram()[255] == 0:  # strokes thinner than a pixel of the smaller mask must not vanish
        resized = _threshold(soft, 1)
    return resized


def capped_size(width: int, height: int, max_megapixels: float) -> tuple[int, int]:
    """The size to send fal: unchanged within the cap, else scaled down to multiples of 8 (at least 8)."""
    limit = max_megapixels * 1e6
    if width * height <= limit:
        return width, height
    scale = math.sqrt(limit / (width * height))
    return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)


def _encode(im: Image.Image, output_format: OutputFormat, *, quality: int = 92) -> bytes:
    out = io.BytesIO()
    if output_format == "jpeg":
        im.save(out, "JPEG", quality=quality, optimize=True)
    else:
        im.save(out, "PNG", optimize=False, compress_level=6)  # optimize=True costs seconds on 4 MP results
    return out.getvalue()


def prepare(image: bytes, mask: bytes | None, *, invert: bool, limits: LimitSettings) -> PreparedInput:
    """Validate the member's image and mask and build what fal receives (SPEC section 3).

    Raises:
        ImageError: any input that cannot be used; the message says what to do.
    """
    notes: list[str] = []
    source = _open(image, "image", max_pixels=limits.max_decode_pixels, max_bytes=limits.max_input_bytes)
    picture, alpha = _split_alpha(source.image, "image")
    width, height = picture.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(
            f"The image is {width}×{height} pixels; it must be at least {MIN_SIDE}×{MIN_SIDE}. "
            "Please upload a larger image."
        )
    if source.multi_frame:
        notes.append("Your image has several frames; only the first one is used.")
    if mask is None:
        repaint = alpha.point([255 if a < ALPHA_OPAQUE else 0 for a in range(256)]) if alpha is not None else None
        if repaint is None or repaint.histogram()[255] == 0:
            raise ImageError(
                "No mask was given and the image has no transparent areas. Attach a mask (white = repaint, "
                "black = keep) or erase the area to repaint to transparency in your image."
            )
    else:
        mask_source = _open(mask, "mask", max_pixels=limits.max_decode_pixels, max_bytes=limits.max_input_bytes)
        repaint = _mask_repaint(mask_source.image, limits.mask_threshold)
        if repaint.size != (width, height):
            _check_shape(repaint.size, (width, height), source.stored_size)
            notes.append(f"The mask ({repaint.width}×{repaint.height}) was resized to the image's {width}×{height}.")
    if invert:
        repaint = ImageOps.invert(repaint)

    sent = capped_size(width, height, limits.max_megapixels)
    if sent != (width, height):
        picture = picture.resize(sent, Image.Resampling.LANCZOS)
        notes.append(
            f"Your image was downscaled from {width}×{height} to {sent[0]}×{sent[1]} "
            f"(limit {_cap_text(limits.max_megapixels)} MP); results come back at {width}×{height}."
        )
    if repaint.size != sent:
        repaint = _resize_repaint(repaint, sent)

    selected = repaint.histogram()[255]
    if selected == 0:
        raise ImageError(
            "With invert_mask on, the mask selects nothing: leave the area to repaint black, or turn invert_mask off."
            if invert
            else "The mask selects nothing: paint the area to repaint in white (or use invert_mask)."
        )
    if selected == sent[0] * sent[1]:
        notes.append("The mask selects the whole image, so all of it is repainted.")
    mask_png = io.BytesIO()
    repaint.save(mask_png, "PNG")
    return PreparedInput(
        image=_encode(picture, "jpeg", quality=95),
        image_mime="image/jpeg",
        mask=mask_png.getvalue(),
        width=width,
        height=height,
        sent_width=sent[0],
        sent_height=sent[1],
        mask_fraction=selected / (sent[0] * sent[1]),
        notes=tuple(notes),
    )


def finish_output(data: bytes, *, width: int, height: int, output_format: OutputFormat, limits: LimitSettings) -> bytes:
    """Decode fal's result and deliver it at the input's size in the requested format.

    Raises:
        ImageError: fal's file is not a readable image within the limits.
    """
    try:
        result = _open(data, "result", max_pixels=limits.max_decode_pixels, max_bytes=limits.max_output_bytes)
        picture, _ = _split_alpha(result.image, "result")
    except ImageError as exc:
        log.warning("fal's result image was refused: %s", exc.message)
        raise ImageError("fal returned an image that could not be read.") from exc
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
    picture, _ = _split_alpha(_open(data, "result", max_pixels=2**31, max_bytes=None).image, "result")
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
