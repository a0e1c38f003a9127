import io
import os
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFile

from bot.config import LimitSettings
from bot.decode import ImageError, sniff_format
from bot.errors import InputError, user_message
from bot.images import (
    PreparedInput,
    data_uri,
    finish_output,
    fit_upload,
    prepare,
    prepare_for_segmentation,
)
from bot.masks import MaskSource, grow, parse_box, sent_size
from bot.models import OutputFormat

# Copies of /work/shared/fixtures (public domain photos, see README.md there); FLUXPAINT_FIXTURES overrides.
FIXTURES = Path(os.environ.get("FLUXPAINT_FIXTURES") or Path(__file__).resolve().parent / "fixtures")
LIMITS = LimitSettings()
WHOLE = LimitSettings(crop_to_mask=False)  # SPEC 3's whole-image path: the crop is SPEC 11's, tested below
MiB = 1024 * 1024


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def encode(im: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def opened(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def boxed(
    size: tuple[int, int], box: tuple[int, int, int, int], *, fill: Any, background: Any, mode: str
) -> Image.Image:
    """A canvas with one filled rectangle (box is inclusive, as ImageDraw draws it)."""
    im = Image.new(mode, size, background)
    ImageDraw.Draw(im).rectangle(box, fill=fill)
    return im


def white_box_mask(size: tuple[int, int] = (64, 64), box: tuple[int, int, int, int] = (16, 16, 47, 47)) -> bytes:
    return encode(boxed(size, box, fill=255, background=0, mode="L"))


def grey_photo(size: tuple[int, int] = (64, 64)) -> bytes:
    return encode(Image.new("RGB", size, (120, 130, 140)))


def refusal(image: bytes, mask: bytes | None = None, *, invert: bool = False, limits: LimitSettings = LIMITS) -> str:
    with pytest.raises(ImageError) as info:
        prepare(image, mask, invert=invert, limits=limits)
    assert isinstance(info.value, InputError)
    assert user_message(info.value) == info.value.message == str(info.value)
    return info.value.message


def sent_mask(prepared: PreparedInput) -> Image.Image:
    mask = opened(prepared.mask)
    assert mask.format == "PNG" and mask.mode == "L"
    assert mask.size == (prepared.sent_width, prepared.sent_height)
    assert {value for value, count in enumerate(mask.histogram()) if count} <= {0, 255}
    return mask


def sent_image(prepared: PreparedInput) -> Image.Image:
    image = opened(prepared.image)
    assert prepared.image_mime == "image/jpeg" and image.format == "JPEG" and image.mode == "RGB"
    assert image.size == (prepared.sent_width, prepared.sent_height)
    return image


def share_at_least(im: Image.Image, level: int) -> float:
    histogram = im.convert("L").histogram()
    return sum(histogram[level:]) / (im.width * im.height)


def close(pixel: object, expected: object, tolerance: int = 8) -> bool:
    """Whether an RGB pixel (from ``getpixel``) is within ``tolerance`` of ``expected`` on every channel."""
    assert isinstance(pixel, tuple) and isinstance(expected, tuple)
    return all(abs(a - e) <= tolerance for a, e in zip(pixel, expected, strict=True))


# the fixtures


def test_coffee_and_its_mask_keep_the_size_and_repaint_the_crema() -> None:
    prepared = prepare(fixture("coffee.png"), fixture("coffee_mask.png"), invert=False, limits=WHOLE)

    assert (prepared.width, prepared.height) == (600, 400)
    assert (prepared.sent_width, prepared.sent_height) == (600, 400)
    assert 0.03 < prepared.mask_fraction < 0.15
    assert prepared.notes == ()
    assert sent_mask(prepared).tobytes() == opened(fixture("coffee_mask.png")).convert("L").tobytes()
    assert close(sent_image(prepared).getpixel((300, 200)), opened(fixture("coffee.png")).getpixel((300, 200)))


@pytest.mark.parametrize("threshold", [1, 128, 255], ids=["any-grey", "half", "only-white"])
def test_soft_nose_mask_is_thresholded_at_the_configured_level(threshold: int) -> None:
    nose = opened(fixture("chelsea_nose_mask.png"))
    limits = LimitSettings(mask_threshold=threshold, crop_to_mask=False)

    prepared = prepare(fixture("chelsea.png"), fixture("chelsea_nose_mask.png"), invert=False, limits=limits)

    assert (prepared.width, prepared.height) == (prepared.sent_width, prepared.sent_height) == (451, 300)
    assert prepared.mask_fraction == pytest.approx(share_at_least(nose, threshold))
    assert share_at_least(nose, 255) <= prepared.mask_fraction <= share_at_least(nose, 1)


def test_soft_nose_mask_at_the_default_threshold_keeps_the_soft_edge_out() -> None:
    prepared = prepare(fixture("chelsea.png"), fixture("chelsea_nose_mask.png"), invert=False, limits=WHOLE)

    nose = opened(fixture("chelsea_nose_mask.png"))
    assert share_at_least(nose, 255) < prepared.mask_fraction < share_at_least(nose, 1)
    assert sent_mask(prepared).tobytes() == nose.point(lambda v: 255 if v >= 128 else 0).tobytes()


def test_erased_eyes_are_the_mask_when_no_mask_is_attached() -> None:
    erased = opened(fixture("chelsea_eyes_erased_rgba.png"))

    prepared = prepare(fixture("chelsea_eyes_erased_rgba.png"), None, invert=False, limits=WHOLE)

    transparent = erased.getchannel("A").point(lambda a: 255 if a < 128 else 0)
    assert sent_mask(prepared).tobytes() == transparent.tobytes()
    assert 0.01 < prepared.mask_fraction < 0.2
    assert (prepared.width, prepared.height) == (451, 300)
    sent_image(prepared)  # RGB: fal gets no alpha channel


def test_invert_mask_repaints_everything_but_the_crema() -> None:
    plain = prepare(fixture("coffee.png"), fixture("coffee_mask.png"), invert=False, limits=LIMITS)

    inverted = prepare(fixture("coffee.png"), fixture("coffee_mask.png"), invert=True, limits=LIMITS)

    assert inverted.mask_fraction == pytest.approx(1 - plain.mask_fraction)
    assert sent_mask(inverted).getpixel((0, 0)) == 255
    assert sent_mask(plain).getpixel((0, 0)) == 0


def test_invert_mask_applies_to_the_transparent_area_too() -> None:
    prepared = prepare(fixture("chelsea_eyes_erased_rgba.png"), None, invert=True, limits=LIMITS)

    assert 0.8 < prepared.mask_fraction < 0.99


# how a mask is read


BOX = (16, 16, 47, 47)  # 32 × 32 of a 64 × 64 mask: a quarter


@pytest.mark.parametrize(
    ("mask", "fraction"),
    [
        (boxed((64, 64), BOX, fill=(255, 0, 0), background=(0, 0, 0), mode="RGB"), 0.25),
        (boxed((64, 64), BOX, fill=(0, 0, 160), background=(0, 0, 0), mode="RGB"), 0.25),
        (boxed((64, 64), BOX, fill=(0, 255, 0), background=(90, 90, 90), mode="RGB"), 0.25),
        (boxed((64, 64), BOX, fill=(0, 0, 0), background=(255, 255, 255), mode="RGB"), 0.75),
        (boxed((64, 64), BOX, fill=(255, 255, 255, 255), background=(255, 255, 255, 0), mode="RGBA"), 0.25),
        (boxed((64, 64), BOX, fill=(255, 255), background=(0, 0), mode="LA"), 0.25),
        (boxed((64, 64), BOX, fill=1, background=0, mode="1"), 0.25),
        (boxed((64, 64), BOX, fill=40_000, background=20_000, mode="I;16"), 0.25),
    ],
    ids=[
        "red-stroke-on-black",
        "dark-blue-stroke-is-above-half",
        "green-stroke-on-dark-grey",
        "black-stroke-on-white-keeps-the-stroke",
        "white-stroke-on-transparent-white-canvas",
        "grey-alpha-mask",
        "one-bit-mask",
        "16-bit-mask-is-scaled-not-clipped",
    ],
)
def test_mask_pixel_is_its_brightest_channel_and_transparent_is_keep(mask: Image.Image, fraction: float) -> None:
    prepared = prepare(grey_photo(), encode(mask), invert=False, limits=LIMITS)

    assert prepared.mask_fraction == pytest.approx(fraction)


def test_half_transparent_white_strokes_count_as_keep() -> None:
    strokes = boxed((64, 64), BOX, fill=(255, 255, 255, 100), background=(0, 0, 0, 255), mode="RGBA")

    assert "The mask selects nothing" in refusal(grey_photo(), encode(strokes))


def test_palette_mask_with_a_transparent_canvas() -> None:
    mask = Image.new("P", (64, 64), 0)
    mask.putpalette([255, 255, 255, 255, 255, 255])  # both entries white; entry 0 is transparent
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=1)

    prepared = prepare(grey_photo(), encode(mask, transparency=0), invert=False, limits=LIMITS)

    assert prepared.mask_fraction == pytest.approx(0.5)


def test_image_alpha_is_ignored_when_a_mask_is_attached() -> None:
    see_through = encode(Image.new("RGBA", (64, 64), (200, 10, 10, 0)))

    prepared = prepare(see_through, white_box_mask(), invert=False, limits=LIMITS)

    assert prepared.mask_fraction == pytest.approx(0.25)
    assert close(sent_image(prepared).getpixel((5, 5)), (200, 10, 10))


@pytest.mark.parametrize(
    ("mask", "invert", "expected"),
    [
        (Image.new("L", (64, 64), 0), False, "The mask selects nothing: paint the area to repaint in white"),
        (Image.new("L", (64, 64), 255), True, "With invert_mask on, the mask selects nothing"),
        (Image.new("RGB", (64, 64), (127, 127, 127)), False, "The mask selects nothing"),
        (Image.new("RGBA", (64, 64), (255, 255, 255, 0)), False, "The mask selects nothing"),
    ],
    ids=["all-black", "all-white-inverted", "grey-just-below-half", "transparent-white"],
)
def test_mask_that_selects_nothing_is_refused(mask: Image.Image, invert: bool, expected: str) -> None:
    assert expected in refusal(grey_photo(), encode(mask), invert=invert)


@pytest.mark.parametrize(
    ("mask", "invert"),
    [(Image.new("L", (64, 64), 255), False), (Image.new("L", (64, 64), 0), True)],
    ids=["all-white", "all-black-inverted"],
)
def test_mask_that_selects_everything_is_allowed_with_a_note(mask: Image.Image, invert: bool) -> None:
    prepared = prepare(grey_photo(), encode(mask), invert=invert, limits=LIMITS)

    assert prepared.mask_fraction == 1.0
    assert "The mask selects the whole image, so all of it is repainted." in prepared.notes


def test_opaque_image_without_a_mask_says_how_to_make_one() -> None:
    expected = (
        "No mask was given and the image has no transparent areas. Attach a mask (white = repaint, "
        "black = keep) or erase the area to repaint to transparency in your image."
    )

    assert refusal(fixture("coffee.png")) == expected
    assert refusal(encode(Image.new("RGBA", (64, 64), (1, 2, 3, 200)))) == expected


def test_palette_image_with_a_transparent_entry_is_its_own_mask() -> None:
    sticker = Image.new("P", (64, 64), 1)
    sticker.putpalette([0, 0, 0, 30, 200, 30])
    ImageDraw.Draw(sticker).rectangle((0, 0, 63, 15), fill=0)  # the top quarter uses the transparent entry

    prepared = prepare(encode(sticker, transparency=0), None, invert=False, limits=WHOLE)

    assert prepared.mask_fraction == pytest.approx(0.25)
    assert close(sent_image(prepared).getpixel((32, 48)), (30, 200, 30))


# sizes and shapes


@pytest.mark.parametrize(
    ("mask_size", "accepted"),
    [((600, 400), True), ((300, 200), True), ((1200, 800), True), ((603, 400), True), ((612, 400), False)],
    ids=["same", "half", "double", "half-percent-off", "two-percent-off"],
)
def test_mask_of_the_same_shape_is_resized_to_the_image(mask_size: tuple[int, int], accepted: bool) -> None:
    crema = opened(fixture("coffee_mask.png")).resize(mask_size)

    if accepted:
        prepared = prepare(fixture("coffee.png"), encode(crema), invert=False, limits=WHOLE)
        assert (prepared.sent_width, prepared.sent_height) == (600, 400)
        reference = prepare(fixture("coffee.png"), fixture("coffee_mask.png"), invert=False, limits=WHOLE)
        assert prepared.mask_fraction == pytest.approx(reference.mask_fraction, abs=0.005)
        resized = [note for note in prepared.notes if "was resized to the image's 600×400" in note]
        assert len(resized) == (mask_size != (600, 400))
    else:
        assert "The mask is 612×400 but the image is 600×400" in refusal(fixture("coffee.png"), encode(crema))


def test_mask_of_another_shape_names_both_sizes() -> None:
    square = white_box_mask((300, 300), (100, 100, 199, 199))

    assert refusal(fixture("coffee.png"), square) == (
        "The mask is 300×300 but the image is 600×400; they must have the same shape (the same aspect ratio)."
    )


def _sideways_photo() -> bytes:
    """Stored 80 × 40 with the left half red; EXIF orientation 6 shows it 40 × 80 with red on top."""
    stored = boxed((80, 40), (0, 0, 39, 39), fill=(220, 0, 0), background=(0, 0, 220), mode="RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_rotated_photo_is_upright_and_takes_a_mask_drawn_on_the_upright_photo() -> None:
    upright_mask = white_box_mask((40, 80), (0, 0, 39, 39))  # the top half of the photo as displayed

    prepared = prepare(_sideways_photo(), upright_mask, invert=False, limits=LIMITS)

    assert (prepared.width, prepared.height) == (40, 80)
    assert prepared.mask_fraction == pytest.approx(0.5)
    image = sent_image(prepared)
    assert close(image.getpixel((20, 10)), (220, 0, 0), tolerance=30)
    assert close(image.getpixel((20, 70)), (0, 0, 220), tolerance=30)


def test_exif_rotated_photo_refuses_a_mask_drawn_on_the_stored_pixels() -> None:
    message = refusal(_sideways_photo(), white_box_mask((80, 40), (0, 0, 39, 39)))

    assert "The mask is 80×40 but the image is 40×80" in message
    assert "EXIF orientation turns it to 40×80" in message


def test_exif_orientation_of_the_mask_is_applied_too() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    stored_mask = boxed((80, 40), (0, 0, 39, 39), fill=255, background=0, mode="L")  # left half: top once turned
    photo = encode(Image.new("RGB", (40, 80), (90, 90, 90)))

    prepared = prepare(
        photo, encode(stored_mask, "JPEG", quality=100, exif=exif.tobytes()), invert=False, limits=LIMITS
    )

    mask = sent_mask(prepared)
    assert (mask.getpixel((20, 10)), mask.getpixel((20, 70))) == (255, 0)


def test_large_photo_is_downscaled_to_the_megapixel_cap_with_a_note() -> None:
    photo = encode(Image.linear_gradient("L").resize((2000, 1500)).convert("RGB"), "JPEG")
    mask = white_box_mask((2000, 1500), (0, 0, 999, 1499))

    prepared = prepare(photo, mask, invert=False, limits=LimitSettings(max_megapixels=2.0, crop_to_mask=False))

    assert (prepared.width, prepared.height) == (2000, 1500)
    assert (prepared.sent_width, prepared.sent_height) == (1632, 1224)
    assert prepared.sent_width % 8 == 0 and prepared.sent_height % 8 == 0
    assert prepared.sent_width * prepared.sent_height <= 2_000_000
    assert prepared.sent_width / prepared.sent_height == pytest.approx(2000 / 1500, rel=0.01)
    assert prepared.mask_fraction == pytest.approx(0.5, abs=0.01)
    assert sent_image(prepared).size == sent_mask(prepared).size == (1632, 1224)
    assert prepared.notes == (
        "Your image was downscaled from 2000×1500 to 1632×1224 (limit 2.0 MP); results come back at 2000×1500.",
    )


@pytest.mark.parametrize(
    ("size", "max_megapixels", "expected"),
    [
        ((4000, 3000), 2.0, (1632, 1224)),
        ((451, 300), 2.0, (451, 300)),
        ((1414, 1414), 2.0, (1414, 1414)),
        ((1415, 1415), 2.0, (1408, 1408)),
        ((3000, 4000), 1.0, (864, 1152)),
        ((200_000, 20), 2.0, (141_416, 8)),
    ],
    ids=["photo", "odd-width-under-cap", "just-under", "just-over", "portrait", "sliver-keeps-8px"],
)
def test_megapixel_cap(size: tuple[int, int], max_megapixels: float, expected: tuple[int, int]) -> None:
    assert sent_size(*size, max_megapixels, min_megapixels=0) == expected


def test_thin_strokes_survive_a_large_downscale() -> None:
    mask = Image.new("L", (4000, 3000), 0)
    ImageDraw.Draw(mask).line((0, 1500, 3999, 1500), fill=255, width=1)  # one pixel in 2.45 after scaling

    prepared = prepare(encode(Image.new("RGB", (4000, 3000))), encode(mask), invert=False, limits=LIMITS)

    assert 0 < prepared.mask_fraction < 0.01


def test_tiny_image_is_refused() -> None:
    message = refusal(encode(Image.new("RGB", (10, 40))), white_box_mask((10, 40), (0, 0, 9, 9)))

    assert message.startswith("The image is 10×40 pixels; it must be at least 16×16.")


# formats and conversions


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("PNG", {}),
        ("JPEG", {"quality": 95}),
        ("WEBP", {"quality": 95}),
        ("AVIF", {"quality": 95}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("GIF", {}),
    ],
    ids=["png", "jpeg", "webp", "avif", "bmp", "tiff", "tiff-lzw", "gif"],
)
def test_every_accepted_format_is_read(fmt: str, params: dict[str, Any]) -> None:
    cat = opened(fixture("chelsea.png")).convert("RGB")

    prepared = prepare(encode(cat, fmt, **params), fixture("chelsea_nose_mask.png"), invert=False, limits=WHOLE)

    assert (prepared.width, prepared.height) == (451, 300)
    assert close(sent_image(prepared).getpixel((225, 150)), cat.getpixel((225, 150)), tolerance=40)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {}), ("GIF", {}), ("JPEG", {"quality": 90})],
    ids=["webp", "bmp", "tiff", "gif", "jpeg-with-ringing"],
)
def test_masks_in_other_formats_select_the_same_area(fmt: str, params: dict[str, Any]) -> None:
    reference = prepare(fixture("coffee.png"), fixture("coffee_mask.png"), invert=False, limits=LIMITS)
    crema = opened(fixture("coffee_mask.png"))

    prepared = prepare(fixture("coffee.png"), encode(crema, fmt, **params), invert=False, limits=LIMITS)

    assert prepared.mask_fraction == pytest.approx(reference.mask_fraction, abs=0.002)


def test_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped_to_white() -> None:
    photo = boxed((64, 64), (32, 0, 63, 63), fill=65535, background=32768, mode="I;16")  # mid-grey | white

    prepared = prepare(encode(photo), white_box_mask(), invert=False, limits=LIMITS)

    image = sent_image(prepared)
    assert close(image.getpixel((8, 32)), (128, 128, 128), tolerance=3)
    assert close(image.getpixel((56, 32)), (255, 255, 255), tolerance=3)


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    cyan = encode(Image.new("CMYK", (64, 64), (255, 0, 0, 0)), "JPEG", quality=95)

    prepared = prepare(cyan, white_box_mask(), invert=False, limits=LIMITS)

    assert close(sent_image(prepared).getpixel((32, 32)), (0, 255, 255), tolerance=12)


def test_animated_gif_uses_its_first_frame() -> None:
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    gif = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)

    prepared = prepare(gif, white_box_mask(), invert=False, limits=LIMITS)

    assert close(sent_image(prepared).getpixel((5, 5)), (255, 0, 0), tolerance=12)
    assert "Your image has several frames; only the first one is used." in prepared.notes


# refusals before and during decoding

UNREADABLE = "isn't a picture Discord/fal can read: upload a PNG, JPEG, WebP, GIF, AVIF, BMP or TIFF file."


def test_text_file_named_png_is_not_a_picture() -> None:
    text = b"hello, this is not an image\n" * 10

    assert refusal(text, white_box_mask()) == f"The image {UNREADABLE}"
    assert refusal(fixture("coffee.png"), text) == f"The mask {UNREADABLE}"


def test_heic_photo_is_not_accepted() -> None:
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)

    assert refusal(heic, white_box_mask()) == f"The image {UNREADABLE}"


def test_empty_file_asks_for_a_new_upload() -> None:
    assert refusal(b"", white_box_mask()) == "The image file is empty (0 bytes); please upload it again."
    assert refusal(fixture("coffee.png"), b"").startswith("The mask file is empty")


@pytest.mark.parametrize(
    ("fmt", "image"),
    [("PNG", fixture("coffee.png")), ("JPEG", encode(opened(fixture("coffee.png")), "JPEG"))],
    ids=["png", "jpeg"],
)
def test_truncated_file_is_damaged_or_incomplete(fmt: str, image: bytes) -> None:
    cut = image[: len(image) // 2]
    assert sniff_format(cut) == fmt.lower()

    message = refusal(cut, fixture("coffee_mask.png"))

    assert message.startswith("The image file is damaged or incomplete (")
    assert message.endswith("); please upload it again.")


def test_damaged_header_message_holds_no_python_repr() -> None:
    garbage = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100

    message = refusal(garbage, white_box_mask())

    assert message == "The image file is damaged or incomplete (not a readable PNG file); please upload it again."


def test_truncated_mask_names_the_mask() -> None:
    mask = fixture("coffee_mask.png")

    assert refusal(fixture("coffee.png"), mask[:-40]).startswith("The mask file is damaged or incomplete (")


def test_file_over_the_byte_limit_is_refused_before_decoding() -> None:
    oversized = b"\x89PNG\r\n\x1a\n" + bytes(3 * MiB)  # never decoded: the size alone refuses it

    message = refusal(oversized, white_box_mask(), limits=LimitSettings(max_input_bytes=2 * MiB))

    assert message == "The image file is 3 MB; the limit is 2 MB. Please upload a smaller file."


def png_claiming(width: int, height: int) -> bytes:
    """A valid 16 × 16 PNG whose IHDR (and its CRC) says ``width`` × ``height``."""
    data = bytearray(encode(Image.new("L", (16, 16), 255)))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (30_000, 30_000, "The image is 30000×30000 pixels (900 MP); the limit is 50 MP."),
        (10_000, 10_000, "The image is 10000×10000 pixels (100 MP); the limit is 50 MP."),
        (8_000, 8_000, "The image is 8000×8000 pixels (64 MP); the limit is 50 MP."),
    ],
    ids=["over-pillows-error-level", "in-pillows-warning-level", "over-our-limit-only"],
)
def test_decompression_bomb_is_refused_from_its_header(
    width: int, height: int, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = png_claiming(width, height)
    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> Any:
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape either
        message = refusal(bomb, white_box_mask())

    assert message.startswith(expected)
    assert (width, height) not in decoded  # refused from the header: the bomb's pixels were never decoded


def test_decompression_bomb_as_mask_names_the_mask() -> None:
    assert refusal(fixture("coffee.png"), png_claiming(30_000, 20_000)).startswith(
        "The mask is 30000×20000 pixels (600 MP); the limit is 50 MP."
    )


def test_decode_limit_above_pillows_own_guard_still_refuses_politely() -> None:
    limits = LimitSettings(max_decode_pixels=2_000_000_000)

    message = refusal(png_claiming(30_000, 30_000), white_box_mask(), limits=limits)

    assert message == (
        "The image is 30000×30000 pixels (900 MP), more than the image library accepts; "
        "please upload a smaller version."
    )


def test_decode_limit_is_configurable() -> None:
    message = refusal(
        fixture("coffee.png"), fixture("coffee_mask.png"), limits=LimitSettings(max_decode_pixels=200_000)
    )

    assert message.startswith("The image is 600×400 pixels (0.2 MP); the limit is 0.2 MP.")


# results from fal


@pytest.mark.parametrize(("output_format", "pil_format"), [("jpeg", "JPEG"), ("png", "PNG")], ids=["jpeg", "png"])
def test_result_is_delivered_at_the_input_size_in_the_requested_format(
    output_format: OutputFormat, pil_format: str
) -> None:
    from_fal = encode(Image.new("RGB", (1632, 1224), (10, 120, 200)), "WEBP")

    final = finish_output(from_fal, width=4000, height=3000, output_format=output_format, limits=LIMITS)

    result = opened(final)
    assert (result.format, result.size, result.mode) == (pil_format, (4000, 3000), "RGB")
    assert close(result.getpixel((2000, 1500)), (10, 120, 200))


def test_result_of_the_right_size_is_only_re_encoded() -> None:
    from_fal = encode(Image.new("RGBA", (451, 300), (10, 120, 200, 255)))

    result = opened(finish_output(from_fal, width=451, height=300, output_format="jpeg", limits=LIMITS))

    assert (result.format, result.size, result.mode) == ("JPEG", (451, 300), "RGB")


@pytest.mark.parametrize(
    "from_fal",
    [b"<html>502 Bad Gateway</html>", encode(Image.new("RGB", (64, 64)), "PNG")[:60], png_claiming(30_000, 30_000)],
    ids=["html", "truncated", "bomb"],
)
def test_unreadable_result_is_reported_as_fal_s(from_fal: bytes) -> None:
    with pytest.raises(ImageError) as info:
        finish_output(from_fal, width=64, height=64, output_format="png", limits=LIMITS)

    assert info.value.message == "fal returned an image that could not be read."


# crop and composite (SPEC 11)

MAGENTA = (255, 0, 255)
CROP_NOTE = "is sent to fal; the rest of your photo is kept as it is."


def box_source(text: str) -> MaskSource:
    return MaskSource("box", box=parse_box(text))


def delivered(image: bytes, prepared: PreparedInput, *, feather_px: int = 8, colour: Any = MAGENTA) -> Image.Image:
    """The PNG delivered when fal paints the whole crop in one colour (at the size it was sent)."""
    from_fal = encode(Image.new("RGB", (prepared.sent_width, prepared.sent_height), colour))
    final = finish_output(
        from_fal,
        width=prepared.width,
        height=prepared.height,
        output_format="png",
        limits=LIMITS,
        original=image,
        crop=prepared.crop,
        full_mask=prepared.full_mask,
        feather_px=feather_px,
    )
    result = opened(final)
    assert (result.format, result.mode, result.size) == ("PNG", "RGB", (prepared.width, prepared.height))
    return result


def changed_outside(result: Image.Image, reference: Image.Image, area: tuple[int, int, int, int]) -> Any:
    """The bounding box of the pixels outside ``area`` (the mask plus its feather) that differ from ``reference``."""
    diff = ImageChops.difference(result, reference.convert("RGB"))
    diff.paste((0, 0, 0), area)
    return diff.getbbox()


def full_mask(prepared: PreparedInput) -> Image.Image:
    mask = opened(prepared.full_mask)
    assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (prepared.width, prepared.height))
    return mask


def test_big_photo_with_a_small_mask_sends_only_a_crop_and_keeps_every_other_pixel() -> None:
    size = (4000, 3000)
    bands = [Image.linear_gradient("L").resize(size), Image.radial_gradient("L").resize(size), Image.new("L", size, 90)]
    photo = encode(Image.merge("RGB", bands), "JPEG", quality=90)

    prepared = prepare(photo, None, invert=False, limits=LIMITS, source=box_source("50,30,60,40"), feather_px=8)

    assert prepared.mask_fraction == pytest.approx(0.01)  # 400 × 300 of 4000 × 3000
    assert prepared.crop == (1900, 825, 2500, 1275)
    assert 500_000 <= prepared.sent_width * prepared.sent_height <= 2_000_000
    assert sent_image(prepared).size == sent_mask(prepared).size
    assert prepared.notes == (f"Only the area around the mask (600×450) {CROP_NOTE}",)
    assert opened(prepared.preview).size == (512, 384)
    result = delivered(photo, prepared)
    assert changed_outside(result, opened(photo), (2000 - 8, 900 - 8, 2400 + 8, 1200 + 8)) is None
    assert result.getpixel((2001, 901)) == result.getpixel((2399, 1199)) == MAGENTA


MODES_SIZE = (1000, 750)  # large enough that a crop around the hole costs less than the whole


def _rgba_with_a_hole() -> bytes:
    im = gradient_rgb(MODES_SIZE).convert("RGBA")
    im.paste((0, 0, 0, 0), HOLE_SOURCE)
    return encode(im)


def _palette_with_a_transparent_hole() -> bytes:
    im = Image.new("P", MODES_SIZE, 1)
    im.putpalette([0, 0, 0, 30, 200, 30, 200, 30, 30])
    ImageDraw.Draw(im).rectangle((0, 0, 999, 100), fill=2)
    ImageDraw.Draw(im).rectangle((400, 250, 599, 499), fill=0)
    return encode(im, transparency=0)


def _sixteen_bit() -> bytes:
    return encode(boxed(MODES_SIZE, (0, 0, 249, 749), fill=257 * 200, background=257 * 100, mode="I;16"))


def _sixteen_bit_seen() -> Image.Image:  # 257 × v is exactly v in 8 bits
    return boxed(MODES_SIZE, (0, 0, 249, 749), fill=(200, 200, 200), background=(100, 100, 100), mode="RGB")


def gradient_rgb(size: tuple[int, int]) -> Image.Image:
    bands = [Image.linear_gradient("L").resize(size), Image.radial_gradient("L").resize(size), Image.new("L", size, 60)]
    return Image.merge("RGB", bands)


HOLE_SOURCE = (400, 250, 600, 500)  # 40 % of 1000, 33.3… % of 750, …


@pytest.mark.parametrize(
    ("image", "source", "seen"),
    [
        (_rgba_with_a_hole(), None, lambda data: opened(data).convert("RGB")),
        (_palette_with_a_transparent_hole(), None, lambda data: opened(data).convert("RGB")),
        (_sixteen_bit(), box_source("40,33.34,60,66.66"), lambda data: _sixteen_bit_seen()),
        (
            encode(gradient_rgb(MODES_SIZE).convert("CMYK"), "JPEG", quality=95),
            box_source("40,33.34,60,66.66"),
            lambda data: opened(data).convert("RGB"),
        ),
        (encode(gradient_rgb(MODES_SIZE).convert("L")), box_source("40,33.34,60,66.66"), lambda data: opened(data)),
    ],
    ids=["rgba-transparent-hole", "palette-transparent-hole", "16-bit-grey", "cmyk-jpeg", "greyscale"],
)
def test_composite_keeps_the_original_after_mode_conversion(
    image: bytes, source: MaskSource | None, seen: Callable[[bytes], Image.Image]
) -> None:
    prepared = prepare(image, None, invert=False, limits=LIMITS, source=source, feather_px=6)

    assert full_mask(prepared).getbbox() == HOLE_SOURCE
    assert prepared.crop != (0, 0, *MODES_SIZE)  # a crop: 0.75 MP is more than the crop is sent at
    result = delivered(image, prepared, feather_px=6)
    assert changed_outside(result, seen(image), (394, 244, 606, 506)) is None
    assert result.getpixel((400, 250)) == result.getpixel((599, 499)) == MAGENTA


def test_whole_image_sent_is_still_pasted_only_inside_the_mask() -> None:
    prepared = prepare(fixture("coffee.png"), fixture("coffee_mask.png"), invert=False, limits=WHOLE, feather_px=4)
    crema = opened(fixture("coffee_mask.png")).convert("L")

    result = delivered(fixture("coffee.png"), prepared, feather_px=4)

    assert prepared.crop == (0, 0, 600, 400) and (prepared.sent_width, prepared.sent_height) == (600, 400)
    assert not any(CROP_NOTE in note for note in prepared.notes)
    diff = ImageChops.difference(result, opened(fixture("coffee.png")).convert("RGB"))
    diff.paste((0, 0, 0), (0, 0), grow(crema, 4))
    assert diff.getbbox() is None
    bbox = crema.getbbox()
    assert bbox is not None
    middle = ((bbox[0] + bbox[2]) // 2, (bbox[1] + bbox[3]) // 2)
    assert crema.getpixel(middle) == 255 and result.getpixel(middle) == MAGENTA


def test_mask_selecting_everything_delivers_fals_result_as_it_is() -> None:
    prepared = prepare(
        fixture("chelsea.png"), None, invert=False, limits=LIMITS, source=MaskSource("region", region="everything")
    )

    assert prepared.crop == (0, 0, 451, 300) and (prepared.sent_width, prepared.sent_height) == (451, 300)
    assert prepared.mask_fraction == 1.0
    assert prepared.notes == ("The mask selects the whole image, so all of it is repainted.",)
    result = delivered(fixture("chelsea.png"), prepared, colour=(10, 120, 200))
    assert result.getextrema() == ((10, 10), (120, 120), (200, 200))


@pytest.mark.parametrize("invert", [False, True], ids=["plain", "inverted"])
def test_segmentation_that_matched_nothing_says_so(invert: bool) -> None:
    words = MaskSource("words", words="the sky")
    nothing = encode(Image.new("L", (451, 300), 0))

    with pytest.raises(ImageError) as info:
        prepare(fixture("chelsea.png"), nothing, invert=invert, limits=LIMITS, source=words)

    assert info.value.message == 'Nothing matched "the sky" in the image; try other words, a box or a region.'


def test_segmentation_of_the_downscaled_copy_fits_the_photo() -> None:
    photo = encode(gradient_rgb((2000, 1500)), "JPEG", quality=90)

    seg = prepare_for_segmentation(photo, limits=LIMITS)
    sent = opened(seg.image)
    found = encode(boxed(sent.size, (816, 612, 1223, 917), fill=255, background=0, mode="L"))
    prepared = prepare(photo, found, invert=False, limits=LIMITS, source=MaskSource("words", words="the middle"))

    assert (seg.width, seg.height, seg.image_mime) == (2000, 1500, "image/jpeg")
    assert (sent.format, sent.size) == ("JPEG", (1632, 1224))
    bbox = full_mask(prepared).getbbox()
    assert bbox is not None
    assert all(abs(a - b) <= 2 for a, b in zip(bbox, (1000, 750, 1500, 1125), strict=True))
    assert prepared.mask_fraction == pytest.approx(0.0625, abs=0.002)


@pytest.mark.parametrize(
    "image",
    [encode(Image.new("RGB", (10, 40))), b"hello, this is not an image\n" * 10, b"", png_claiming(30_000, 30_000)],
    ids=["tiny", "text", "empty", "bomb"],
)
def test_segmentation_input_is_refused_as_prepare_refuses_it(image: bytes) -> None:
    with pytest.raises(ImageError) as info:
        prepare_for_segmentation(image, limits=LIMITS)

    assert info.value.message == refusal(image, white_box_mask())


def _sideways(orientation: int) -> bytes:
    """Stored 80 × 40 with the left half red; shown 40 × 80 with red on top (orientation 6) or below (8)."""
    stored = boxed((80, 40), (0, 0, 39, 39), fill=(220, 0, 0), background=(0, 0, 220), mode="RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize(
    ("orientation", "top_colour"), [(6, (220, 0, 0)), (8, (0, 0, 220))], ids=["orientation-6", "orientation-8"]
)
@pytest.mark.parametrize(
    "source", [box_source("0,0,100,50"), MaskSource("region", region="top")], ids=["box", "region"]
)
def test_box_and_region_are_read_on_the_photo_as_displayed(
    orientation: int, top_colour: tuple[int, int, int], source: MaskSource
) -> None:
    prepared = prepare(_sideways(orientation), None, invert=False, limits=LIMITS, source=source)

    assert (prepared.width, prepared.height) == (40, 80)
    assert full_mask(prepared).getbbox() == (0, 0, 40, 40)
    assert prepared.mask_fraction == pytest.approx(0.5)
    assert close(sent_image(prepared).getpixel((20, 10)), top_colour, tolerance=30)


def test_mask_grow_widens_the_mask_kept_for_the_composite() -> None:
    plain = prepare(fixture("chelsea.png"), None, invert=False, limits=LIMITS, source=box_source("25,10,75,60"))

    grown = prepare(
        fixture("chelsea.png"), None, invert=False, limits=LIMITS, source=box_source("25,10,75,60"), grow_px=10
    )

    assert full_mask(plain).getbbox() == (112, 30, 339, 180)
    assert full_mask(grown).getbbox() == (102, 20, 349, 190)
    assert grown.mask_fraction > plain.mask_fraction
    assert full_mask(grown).getpixel((102, 20)) == 0  # the corner is rounded: a disc, not a square


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (box_source("0,0,100,100"), "With invert_mask on, the box 0,0,100,100 leaves nothing to repaint"),
        (MaskSource("region", region="everything"), "With invert_mask on, the region everything leaves nothing"),
    ],
    ids=["box", "region"],
)
def test_inverted_box_or_region_of_everything_is_refused(source: MaskSource, expected: str) -> None:
    with pytest.raises(ImageError) as info:
        prepare(fixture("chelsea.png"), None, invert=True, limits=LIMITS, source=source)

    assert info.value.message.startswith(expected)


# Discord's upload limit


def noisy_png(size: tuple[int, int]) -> bytes:
    return encode(Image.merge("RGB", [Image.effect_noise(size, 60) for _ in range(3)]))


def test_file_within_the_upload_limit_is_untouched() -> None:
    data = fixture("coffee.png")

    assert fit_upload(data, limit_bytes=len(data), output_format="png") == (data, "png")


def test_big_noisy_png_becomes_a_jpeg_under_the_limit() -> None:
    data = noisy_png((800, 600))
    assert len(data) > 1 * MiB

    fitted, fmt = fit_upload(data, limit_bytes=400_000, output_format="png")

    assert fmt == "jpeg" and len(fitted) <= 400_000
    assert (opened(fitted).format, opened(fitted).size) == ("JPEG", (800, 600))


def test_upload_limit_shrinks_the_picture_when_quality_is_not_enough() -> None:
    data = noisy_png((800, 600))

    fitted, fmt = fit_upload(data, limit_bytes=40_000, output_format="png")

    width, height = opened(fitted).size
    assert fmt == "jpeg" and len(fitted) <= 40_000
    assert width < 800 and width / height == pytest.approx(800 / 600, rel=0.02)


def test_jpeg_over_the_limit_is_re_encoded_at_a_lower_quality() -> None:
    data = encode(opened(noisy_png((800, 600))), "JPEG", quality=92)

    fitted, fmt = fit_upload(data, limit_bytes=len(data) * 3 // 4, output_format="jpeg")

    assert fmt == "jpeg" and len(fitted) <= len(data) * 3 // 4
    assert opened(fitted).size == (800, 600)


# small pieces


def test_data_uri() -> None:
    assert data_uri(b"\x89PNG", "image/png") == "data:image/png;base64,iVBORw=="


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: encode(Image.new("RGB", (8, 8)), "PNG"), "png"),
        (lambda: encode(Image.new("RGB", (8, 8)), "JPEG"), "jpeg"),
        (lambda: encode(Image.new("RGB", (8, 8)), "WEBP"), "webp"),
        (lambda: encode(Image.new("RGB", (8, 8)), "GIF"), "gif"),
        (lambda: encode(Image.new("RGB", (8, 8)), "AVIF"), "avif"),
        (lambda: encode(Image.new("RGB", (8, 8)), "BMP"), "bmp"),
        (lambda: encode(Image.new("RGB", (8, 8)), "TIFF"), "tiff"),
        (lambda: b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf", "avif"),
        (lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", None),
        (lambda: b"%PDF-1.7\n", None),
        (lambda: b"", None),
    ],
    ids=["png", "jpeg", "webp", "gif", "avif", "bmp", "tiff", "avif-by-compatible-brand", "heic", "pdf", "empty"],
)
def test_sniff_format_reads_magic_bytes(make: Callable[[], bytes], expected: str | None) -> None:
    assert sniff_format(make()) == expected


def test_a_16_bit_grey_png_with_a_transparent_value_uses_it_as_the_mask() -> None:
    im = Image.new("I;16", (400, 300), 257 * 100)
    ImageDraw.Draw(im).rectangle((100, 100, 199, 149), fill=5)  # the grey value tRNS makes transparent
    prepared = prepare(encode(im, transparency=5), None, invert=False, limits=LIMITS)
    assert full_mask(prepared).getbbox() == (100, 100, 200, 150)
