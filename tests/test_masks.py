import io
import math

import pytest
from PIL import Image, ImageChops

from bot.config import LimitSettings
from bot.errors import InputError, user_message
from bot.masks import (
    BOX_FORM,
    Box,
    MaskError,
    MaskSource,
    box_mask,
    composite,
    crop_box,
    grow,
    mask_source,
    nothing_selected,
    overlay,
    parse_box,
    plan_send,
    region_mask,
    sent_size,
    soft_edge,
)
from bot.models import InpaintOptions, MaskRegion


def dots(size: tuple[int, int], *points: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    for point in points:
        mask.putpixel(point, 255)
    return mask


def rect(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A 0/255 mask with ``box`` (right and bottom exclusive) set."""
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def distances(mask: Image.Image) -> dict[tuple[int, int], float]:
    """Euclidean distance from every pixel to the nearest 255 pixel of a small mask (brute force, to check against)."""
    width, height = mask.size
    selected = {(i % width, i // width) for i, value in enumerate(mask.tobytes()) if value}
    edge = [  # the nearest selected pixel of an unselected one always has an unselected neighbour
        (x, y)
        for x, y in selected
        if any((x + dx, y + dy) not in selected for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)))
    ]
    return {
        (x, y): 0.0 if (x, y) in selected else min(math.hypot(x - px, y - py) for px, py in edge)
        for y in range(height)
        for x in range(width)
    }


def values(mask: Image.Image) -> set[int]:
    return {value for value, count in enumerate(mask.histogram()) if count}


def refusal(text: str) -> str:
    with pytest.raises(MaskError) as info:
        parse_box(text)
    assert isinstance(info.value, InputError)
    assert user_message(info.value) == info.value.message
    return info.value.message


# box and region


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("25,10,75,60", Box(25, 10, 75, 60)),
        ("  25 , 10 ,75,  60 ", Box(25, 10, 75, 60)),
        ("25%,10%,75%,60%", Box(25, 10, 75, 60)),
        ("25 %, 10 %, 75 %, 60 %", Box(25, 10, 75, 60)),
        ("12.5,0,87.5,100", Box(12.5, 0, 87.5, 100)),
        ("25 10 75 60", Box(25, 10, 75, 60)),
        ("0,0,100,100", Box(0, 0, 100, 100)),
    ],
    ids=["plain", "spaces", "percent-signs", "spaced-percent-signs", "decimals", "spaces-only", "everything"],
)
def test_box_is_read_from_percentages(text: str, expected: Box) -> None:
    assert parse_box(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "The box is empty"),
        ("   ", "The box is empty"),
        ("25,10,75", "The box has 3 numbers instead of 4"),
        ("25,10,75,60,90", "The box has 5 numbers instead of 4"),
        ("left,10,75,60", 'The box has "left" where a number should be'),
        ("25,,75,60", "The box has an empty place where a number should be"),
        ("nan,10,75,60", 'The box has "nan" where a number should be'),
        ("25,10,inf,60", 'The box has "inf" where a number should be'),
        ("25,10,175,60", "The box's 175 is outside 0 to 100"),
        ("-5,10,75,60", "The box's -5 is outside 0 to 100"),
        ("75,10,25,60", "The box's right edge x2 (25) must be greater than its left edge x1 (75)"),
        ("25,60,75,60", "The box's bottom edge y2 (60) must be greater than its top edge y1 (60)"),
    ],
    ids=[
        "empty",
        "blank",
        "three-numbers",
        "five-numbers",
        "a-word",
        "empty-place",
        "nan",
        "infinity",
        "over-100",
        "negative",
        "x-reversed",
        "y-flat",
    ],
)
def test_bad_box_says_what_is_wrong_and_shows_an_example(text: str, expected: str) -> None:
    assert refusal(text) == f"{expected}: {BOX_FORM}."
    assert BOX_FORM == "box must be x1,y1,x2,y2 in percent, like 25,10,75,60"


@pytest.mark.parametrize(
    ("size", "box", "expected"),
    [
        ((451, 300), Box(25, 10, 75, 60), (112, 30, 339, 180)),  # 112.75 down, 338.25 up
        ((100, 100), Box(29, 29, 71, 71), (29, 29, 71, 71)),  # 29 % of 100 px is 29 px, not 28.999…
        ((7, 5), Box(0, 0, 1, 1), (0, 0, 1, 1)),  # less than a pixel still selects one
        ((7, 5), Box(99.9, 99.9, 100, 100), (6, 4, 7, 5)),
        ((7, 5), Box(0, 0, 100, 100), (0, 0, 7, 5)),
    ],
    ids=["odd-photo", "exact-percent", "tiny-box-one-pixel", "last-pixel", "everything"],
)
def test_box_becomes_pixels_rounded_outwards(size: tuple[int, int], box: Box, expected: tuple[int, ...]) -> None:
    mask = box_mask(size, box)

    assert mask.size == size and values(mask) <= {0, 255}
    assert mask.getbbox() == expected
    assert mask.histogram()[255] == (expected[2] - expected[0]) * (expected[3] - expected[1])  # a full rectangle


REGIONS: list[tuple[tuple[int, int], MaskRegion, tuple[int, int, int, int]]] = [
    ((451, 300), "top", (0, 0, 451, 150)),
    ((451, 300), "bottom", (0, 150, 451, 300)),
    ((451, 300), "left", (0, 0, 226, 300)),  # the middle column of 451 is the left half's
    ((451, 300), "right", (226, 0, 451, 300)),
    ((451, 300), "center", (112, 75, 339, 225)),
    ((451, 300), "everything", (0, 0, 451, 300)),
    ((7, 5), "top", (0, 0, 7, 3)),  # the middle row of 5 is the top half's
    ((7, 5), "bottom", (0, 3, 7, 5)),
    ((7, 5), "left", (0, 0, 4, 5)),
    ((7, 5), "right", (4, 0, 7, 5)),
    ((7, 5), "center", (1, 1, 6, 4)),
    ((7, 5), "everything", (0, 0, 7, 5)),
]


@pytest.mark.parametrize(("size", "region", "expected"), REGIONS, ids=[f"{s[0]}x{s[1]}-{r}" for s, r, _ in REGIONS])
def test_region_is_that_part_of_the_image(size: tuple[int, int], region: MaskRegion, expected: tuple[int, ...]) -> None:
    mask = region_mask(size, region)

    assert mask.size == size and values(mask) <= {0, 255}
    assert mask.getbbox() == expected
    assert mask.histogram()[255] == (expected[2] - expected[0]) * (expected[3] - expected[1])


@pytest.mark.parametrize("size", [(451, 300), (7, 5), (16, 16), (1, 1)], ids=["odd-width", "odd-both", "even", "1x1"])
@pytest.mark.parametrize("pair", [("top", "bottom"), ("left", "right")], ids=["top-bottom", "left-right"])
def test_opposite_halves_cover_every_pixel_exactly_once(size: tuple[int, int], pair: tuple[MaskRegion, ...]) -> None:
    first, second = (region_mask(size, region) for region in pair)

    assert ImageChops.darker(first, second).getbbox() is None  # no pixel in both
    assert ImageChops.lighter(first, second).histogram()[255] == size[0] * size[1]  # every pixel in one


# choosing the source


@pytest.mark.parametrize(
    ("options", "has_file", "expected"),
    [
        ({}, True, MaskSource("file")),
        ({}, False, MaskSource("alpha")),
        ({"mask_prompt": "the sky"}, False, MaskSource("words", words="the sky")),
        ({"box": "25,10,75,60"}, False, MaskSource("box", box=Box(25, 10, 75, 60))),
        ({"region": "top"}, False, MaskSource("region", region="top")),
    ],
    ids=["attachment", "transparency", "words", "box", "region"],
)
def test_mask_source_is_the_one_given(options: dict[str, str], has_file: bool, expected: MaskSource) -> None:
    assert mask_source(InpaintOptions(prompt="a hat", **options), has_file=has_file) == expected


@pytest.mark.parametrize(
    ("options", "has_file", "expected"),
    [
        ({"box": "25,10,75,60"}, True, "you gave mask and box."),
        ({"mask_prompt": "the sky", "region": "top"}, False, "you gave mask_prompt and region."),
        (
            {"mask_prompt": "sky", "box": "1,1,2,2", "region": "top"},
            True,
            "you gave mask, mask_prompt, box and region.",
        ),
    ],
    ids=["file-and-box", "words-and-region", "all-four"],
)
def test_two_mask_sources_are_refused_naming_both(options: dict[str, str], has_file: bool, expected: str) -> None:
    with pytest.raises(MaskError) as info:
        mask_source(InpaintOptions(prompt="a hat", **options), has_file=has_file)

    assert info.value.message == f"Choose the area to repaint one way only: {expected}"


def test_bad_box_option_is_refused_before_anything_is_decoded() -> None:
    with pytest.raises(MaskError, match="The box has 2 numbers instead of 4"):
        mask_source(InpaintOptions(prompt="a hat", box="10,20"), has_file=False)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (MaskSource("box", box=Box(0, 0, 100, 100)), "With invert_mask on, the box 0,0,100,100 leaves nothing"),
        (MaskSource("region", region="everything"), "With invert_mask on, the region everything leaves nothing"),
        (MaskSource("words", words="the cat"), 'With invert_mask on, nothing is left to repaint: "the cat" matched'),
        (MaskSource("file"), "With invert_mask on, the mask selects nothing: leave the area to repaint black"),
    ],
    ids=["box", "region", "words", "file"],
)
def test_inverted_source_that_leaves_nothing_says_which(source: MaskSource, expected: str) -> None:
    assert nothing_selected(source, invert=True).startswith(expected)


# grow and feather


@pytest.mark.parametrize("px", [1, 3, 5, 10], ids=lambda px: f"{px}px")
def test_grow_is_a_disc_of_the_given_radius(px: int) -> None:
    mask = dots((25, 25), (12, 12), (14, 13))

    grown = grow(mask, px)

    for point, d in distances(mask).items():
        assert grown.getpixel(point) == (255 if d <= px else 0), point


@pytest.mark.parametrize(
    ("mask", "inside", "outside"),
    [
        (dots((20, 20), (0, 0)), [(0, 6), (6, 0), (4, 4)], [(5, 5), (19, 19), (19, 0), (0, 19), (13, 0)]),
        (dots((20, 20), (19, 19)), [(19, 13), (13, 19), (15, 15)], [(14, 14), (0, 0), (0, 19), (19, 0)]),
        (rect((20, 20), (0, 0, 20, 1)), [(0, 6), (19, 6), (10, 6)], [(0, 7), (10, 19), (19, 19)]),
    ],
    ids=["top-left-corner", "bottom-right-corner", "top-edge"],
)
def test_grow_at_the_border_does_not_wrap_around(
    mask: Image.Image, inside: list[tuple[int, int]], outside: list[tuple[int, int]]
) -> None:
    grown = grow(mask, 6)

    assert [grown.getpixel(p) for p in inside] == [255] * len(inside)
    assert [grown.getpixel(p) for p in outside] == [0] * len(outside)


@pytest.mark.parametrize(
    "mask",
    [Image.new("L", (30, 20), 0), Image.new("L", (30, 20), 255), dots((30, 20), (3, 4))],
    ids=["empty", "everything", "a-dot"],
)
def test_grow_and_feather_by_nothing_keep_the_mask(mask: Image.Image) -> None:
    assert grow(mask, 0).tobytes() == mask.tobytes()
    assert soft_edge(mask, 0).tobytes() == mask.tobytes()


@pytest.mark.parametrize(
    "mask", [Image.new("L", (30, 20), 0), Image.new("L", (30, 20), 255)], ids=["empty", "everything"]
)
def test_grow_and_feather_of_an_empty_or_full_mask(mask: Image.Image) -> None:
    assert grow(mask, 12).tobytes() == mask.tobytes()
    assert soft_edge(mask, 12).tobytes() == mask.tobytes()


@pytest.mark.parametrize(
    ("mask", "feather"),
    [
        (rect((41, 41), (16, 16, 25, 25)), 8),
        (dots((41, 41), (20, 20)), 8),
        (rect((41, 41), (10, 10, 30, 30)), 1),
        (rect((41, 41), (0, 0, 9, 9)), 8),  # in the corner
        (rect((41, 41), (0, 30, 41, 41)), 13),  # the bottom edge, an odd feather
    ],
    ids=["square", "dot", "feather-1", "corner", "bottom-edge-odd-feather"],
)
def test_soft_edge_is_255_on_the_mask_and_0_beyond_the_feather(mask: Image.Image, feather: int) -> None:
    alpha = soft_edge(mask, feather)

    assert alpha.size == mask.size
    for point, d in distances(mask).items():
        value = alpha.getpixel(point)
        assert isinstance(value, int)
        if d == 0:
            assert value == 255, point
        elif d > feather:
            assert value == 0, (point, d)
        elif d <= 1:
            assert value > 0, point  # the ramp starts right at the mask


def test_soft_edge_ramp_falls_evenly_away_from_a_straight_edge() -> None:
    alpha = soft_edge(rect((60, 20), (0, 0, 20, 20)), 8)

    ramp = [alpha.getpixel((x, 10)) for x in range(19, 30)]

    assert ramp == [255, 227, 198, 170, 142, 113, 85, 57, 28, 0, 0]  # 255 × (9 - d) / 9 for d = 1 … 8


def test_soft_edge_is_local_to_the_mask_on_a_big_image() -> None:
    mask = rect((4000, 3000), (2000, 1000, 2400, 1300))

    alpha = soft_edge(mask, 64)
    grown = grow(mask, 128)

    assert alpha.getbbox() == (1936, 936, 2464, 1364)
    assert grown.getbbox() == (1872, 872, 2528, 1428)
    assert alpha.getpixel((2200, 1150)) == 255 and alpha.getpixel((2200, 1364)) == 0


# crop and sizes

CROP_IMAGE = (1000, 800)


@pytest.mark.parametrize(
    ("bbox", "padding", "margin", "expected"),
    [
        ((400, 300, 500, 400), 0.25, 0, (368, 268, 532, 432)),  # 25 px of padding is less than 32
        ((300, 300, 700, 500), 0.25, 0, (200, 250, 800, 550)),  # 100 px and 50 px
        ((400, 300, 500, 400), 0.25, 60, (340, 240, 560, 460)),  # the feather needs more
        ((400, 300, 500, 400), 0.0, 0, (368, 268, 532, 432)),
        ((0, 0, 50, 50), 0.25, 0, (0, 0, 82, 82)),  # clamped at the top-left corner
        ((950, 750, 1000, 800), 0.25, 0, (918, 718, 1000, 800)),  # and the bottom-right one
        ((0, 390, 1000, 410), 0.25, 0, (0, 275, 1000, 525)),  # a stripe from edge to edge: widened to 4:1
        ((10, 0, 30, 800), 0.25, 0, (0, 0, 200, 800)),  # a thin stripe by the left edge: widened, kept inside
        ((60, 50, 940, 750), 0.25, 0, (0, 0, 1000, 800)),  # the padded crop is nearly all of it
    ],
    ids=[
        "min-32px",
        "share-of-box",
        "feather-margin",
        "no-padding",
        "top-left",
        "bottom-right",
        "stripe",
        "thin-at-edge",
        "nearly-all",
    ],
)
def test_crop_is_the_padded_bounding_box_clamped_to_the_image(
    bbox: tuple[int, int, int, int], padding: float, margin: int, expected: tuple[int, ...]
) -> None:
    assert crop_box(rect(CROP_IMAGE, bbox), padding=padding, margin_px=margin, crop_to_mask=True) == expected


@pytest.mark.parametrize(
    ("mask", "crop_to_mask"),
    [(rect(CROP_IMAGE, (400, 300, 500, 400)), False), (Image.new("L", CROP_IMAGE, 0), True)],
    ids=["crop-off", "empty-mask"],
)
def test_whole_image_when_cropping_is_off_or_there_is_no_mask(mask: Image.Image, crop_to_mask: bool) -> None:
    assert crop_box(mask, padding=0.25, margin_px=8, crop_to_mask=crop_to_mask) == (0, 0, *CROP_IMAGE)


@pytest.mark.parametrize(
    ("size", "max_mp", "min_mp", "expected"),
    [
        ((4000, 3000), 2.0, 0.5, (1632, 1224)),
        ((1000, 700), 2.0, 0.5, (1000, 700)),  # between the limits: unchanged
        ((400, 300), 2.0, 0.5, (824, 616)),  # scaled up, rounded up to multiples of 8
        ((164, 164), 2.0, 0.5, (712, 712)),
        ((4000, 10), 2.0, 0.5, (14144, 40)),
        ((100, 100), 0.3, 0.5, (544, 544)),  # an admin's cap below 0.5 MP wins
        ((451, 300), 2.0, 0, (451, 300)),  # the whole image is not scaled up
        ((200_000, 20), 2.0, 0, (141_416, 8)),
    ],
    ids=["photo-down", "in-range", "small-crop-up", "tiny-square-up", "sliver-up", "cap-below-min", "whole", "sliver"],
)
def test_sent_size(size: tuple[int, int], max_mp: float, min_mp: float, expected: tuple[int, int]) -> None:
    sent = sent_size(*size, max_mp, min_mp)

    assert sent == expected
    if sent != size:
        assert sent[0] % 8 == sent[1] % 8 == 0
        assert min(min_mp, max_mp) * 1e6 * 0.98 <= sent[0] * sent[1] <= max_mp * 1e6
        if min(size) > 100:
            assert sent[0] / sent[1] == pytest.approx(size[0] / size[1], rel=0.02)


def test_a_crop_that_would_cost_more_than_the_whole_small_photo_is_not_sent() -> None:
    # 600×400 is 0.24 MP: a crop scaled up to 0.5 MP would be dearer than the whole photo
    plan = plan_send(rect((600, 400), (250, 150, 350, 250)), limits=LimitSettings(), margin_px=8)
    assert plan.crop == (0, 0, 600, 400) and plan.size == (600, 400) and plan.notes == ()


def test_plan_sends_a_small_crop_scaled_up_and_says_so() -> None:
    plan = plan_send(rect((4000, 3000), (2000, 1000, 2400, 1300)), limits=LimitSettings(), margin_px=8)

    assert plan.crop == (1900, 925, 2500, 1375)
    assert 500_000 <= plan.size[0] * plan.size[1] <= 2_000_000
    assert plan.notes == (
        "Only the area around the mask (600×450) is sent to fal; the rest of your photo is kept as it is.",
    )


# composite and preview


def gradient(size: tuple[int, int]) -> Image.Image:
    bands = [Image.linear_gradient("L").resize(size), Image.radial_gradient("L").resize(size), Image.new("L", size, 77)]
    return Image.merge("RGB", bands)


@pytest.mark.parametrize("alpha_at", ["crop", "full"], ids=["alpha-of-the-crop", "alpha-of-the-image"])
def test_composite_pastes_only_inside_alpha(alpha_at: str) -> None:
    original = gradient((40, 30))
    before = original.tobytes()
    crop = (10, 5, 30, 25)
    crop_alpha = rect((20, 20), (5, 5, 15, 15))
    crop_alpha.putpixel((2, 2), 128)
    alpha = crop_alpha
    if alpha_at == "full":
        alpha = Image.new("L", original.size, 0)
        alpha.paste(crop_alpha, crop[:2])
    from_fal = Image.new("RGB", (16, 16), (255, 0, 255))  # at the sent size, not the crop's

    out = composite(original, from_fal, crop, alpha)

    assert out.size == original.size and out.mode == "RGB"
    assert original.tobytes() == before
    kept = ImageChops.difference(out, original)
    kept.paste((0, 0, 0), (15, 10, 25, 20))
    kept.paste((0, 0, 0), (12, 7, 13, 8))
    assert kept.getbbox() is None  # every pixel with alpha 0 is the original's
    assert out.getpixel((20, 15)) == (255, 0, 255)
    assert out.getpixel((12, 7)) not in (original.getpixel((12, 7)), (255, 0, 255))  # half and half


def test_overlay_is_a_small_jpeg_with_the_area_tinted() -> None:
    picture = Image.new("RGB", (2048, 1536), (40, 160, 40))
    mask = rect((2048, 1536), (512, 512, 1024, 1024))

    preview = Image.open(io.BytesIO(overlay(picture, mask)))

    assert (preview.format, preview.size) == ("JPEG", (512, 384))
    inside = preview.getpixel((192, 192))
    assert isinstance(inside, tuple)
    red, green, _ = inside
    assert red > 100 and green < 140
    assert preview.getpixel((50, 50)) == pytest.approx((40, 160, 40), abs=6)


def test_overlay_of_a_small_image_keeps_its_size() -> None:
    preview = Image.open(io.BytesIO(overlay(Image.new("RGB", (64, 48)), rect((64, 48), (0, 0, 32, 48)), max_side=512)))

    assert preview.size == (64, 48)
