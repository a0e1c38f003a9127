"""Read the files members and fal send: check the bytes and header, decode the first frame, orient it by EXIF and
convert its mode; synchronous Pillow code, no other I/O."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError, features

from bot import masks
from bot.errors import InputError

MiB = 1024 * 1024

ALPHA_OPAQUE = 128  # alpha below 50% counts as transparent (SPEC 3)
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
class Decoded:
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


def _megabytes(size: int) -> str:
    return f"{round(size / MiB, 1):g}"


def _megapixels(pixels: float) -> str:
    return f"{round(pixels / 1e6, 1):g}"


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


def open_image(data: bytes, what: str, *, max_pixels: int, max_bytes: int | None) -> Decoded:
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
    return Decoded(image=oriented, stored_size=stored_size, multi_frame=multi_frame)


def _to_8bit(im: Image.Image) -> Image.Image:
    """Greyscale of more than 8 bits, scaled (not clipped) to mode "L"."""
    if im.mode == "F":
        high = im.getextrema()[1]
        scale = 255.0 if isinstance(high, float) and high <= 1.0 else 1.0  # float files usually hold 0..1
        return im.point(lambda v: v * scale).convert("L")
    return im.convert("I").point(lambda v: v / 257).convert("L")  # 16-bit: 65535 -> 255


def _grey_key_alpha(im: Image.Image) -> Image.Image | None:
    """A 16-bit greyscale PNG's tRNS transparency (one grey value is transparent) as an "L" alpha, else None."""
    key = im.info.get("transparency")
    if not isinstance(key, int) or im.mode == "F":
        return None
    grey = im.convert("I")
    # |v - key| from two linear maps (all that point() allows on "I"), each clipped at 0 by the conversion to "L"
    above = grey.point(lambda v: v - key).convert("L")
    below = grey.point(lambda v: key - v).convert("L")
    return ImageChops.lighter(above, below).point([0] + [255] * 255)  # 0 where the pixel is the transparent value


def split_alpha(im: Image.Image, what: str) -> tuple[Image.Image, Image.Image | None]:
    """The picture as RGB and its alpha channel ("L"), or None when it has no transparency.

    Raises:
        ImageError: a colour mode Pillow cannot convert to RGB.
    """
    try:
        if im.mode in _SIXTEEN_BIT_MODES or im.mode == "F":
            return _to_8bit(im).convert("RGB"), _grey_key_alpha(im)
        if im.mode in _ALPHA_MODES or "transparency" in im.info:  # palette and tRNS transparency live in info
            rgba = im.convert("RGBA")
            return rgba.convert("RGB"), rgba.getchannel("A")
        return im.convert("RGB"), None
    except ValueError as exc:
        raise ImageError(
            f"The {what} uses a colour mode ({im.mode}) that cannot be converted; save it as an RGB PNG or JPEG."
        ) from exc


def mask_repaint(im: Image.Image, level: int) -> Image.Image:
    """255 where a mask asks for a repaint: the brightest channel at or above the threshold, and opaque."""
    if im.mode in ("1", "L") and "transparency" not in im.info:
        return masks.threshold(im.convert("L"), level)
    colour, alpha = split_alpha(im, "mask")
    red, green, blue = colour.split()
    repaint = masks.threshold(ImageChops.lighter(ImageChops.lighter(red, green), blue), level)
    if alpha is not None:  # strokes on a transparent canvas: transparent means keep, whatever its colour
        repaint = ImageChops.darker(repaint, masks.threshold(alpha, ALPHA_OPAQUE))
    return repaint
