"""The README's mask pictures, made by the bot's own pipeline from the test fixtures; fal is stood in for locally.

Run from the repository's root: ``.venv/bin/python -m docs.make_pictures`` (writes ``docs/masks-*.png``). The output
is deterministic for a given Pillow: the same files come out on every run.

Each picture is one mask source in a row of three: the input, the mask as the bot's reply shows it (the preview of
``images.prepare``), and a result. There is no fal here, so fal's painting is a stand-in: the very image fal would
receive, posterized and colour-shifted, is handed to ``images.finish_output`` as fal's answer, which pastes it into
the photo inside the feathered mask exactly as the bot does. For ``mask_prompt`` the fixture
``chelsea_nose_mask.png`` plays the mask fal's segmentation would return.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from bot import images, masks
from bot.config import LimitSettings

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # copies of /work/shared/fixtures
OUT = Path(__file__).resolve().parent
THUMB_PX = 180  # thumbnail height
GAP_PX = 10
TITLE_PT = 15
CAPTION_PT = 12
CAPTION_LINES = 2
FEATHER_PX = 8  # mask_feather's default
COLOURS = 128  # a palette keeps each picture at a few tens of KB
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
GREY = (110, 110, 110)
CROP_LINE = (0, 160, 255)
STAND_IN = "stand-in for fal's output; the compositing is real"


@dataclass(frozen=True)
class Example:
    name: str  # docs/masks-<name>.png
    title: str
    image: str  # a fixture
    source: masks.MaskSource
    mask: str | None = None  # a fixture: the mask file, or the stand-in for fal's segmentation
    mask_caption: str = "the mask the bot's reply shows (tinted)"
    scale: int = 1  # the fixture enlarged this many times, to show a crop as a phone photo would get one


EXAMPLES = (
    Example(
        "file",
        "mask:coffee_mask.png (white = repaint, black = keep)",
        "coffee.png",
        masks.MaskSource("file"),
        mask="coffee_mask.png",
    ),
    Example(
        "alpha",
        "no mask: the image's transparent pixels are repainted (the eyes were erased)",
        "chelsea_eyes_erased_rgba.png",
        masks.MaskSource("alpha"),
    ),
    Example(
        "words",
        "mask_prompt:the cat's nose (fal's segmentation finds it)",
        "chelsea.png",
        masks.MaskSource("words", words="the cat's nose"),
        mask="chelsea_nose_mask.png",
        mask_caption="stand-in: chelsea_nose_mask.png plays fal's segmentation of “the cat's nose”",
    ),
    Example(
        "box",
        "box:30,20,70,80 (x1,y1,x2,y2 in percent)",
        "coffee.png",
        masks.MaskSource("box", box=masks.parse_box("30,20,70,80")),
    ),
    Example("region", "region:top", "chelsea.png", masks.MaskSource("region", region="top")),
    Example(
        "crop",
        "crop and composite: box:44,38,58,62 on the photo enlarged to 2400×1600",
        "coffee.png",
        masks.MaskSource("box", box=masks.parse_box("44,38,58,62")),
        mask_caption="blue: the only part sent to fal",
        scale=4,
    ),
)


def stand_in_fal(sent: bytes) -> bytes:
    """What fal would answer, made locally and obviously fake: the image it was sent, colour-shifted and posterized."""
    with Image.open(io.BytesIO(sent)) as received:
        red, green, blue = received.convert("RGB").split()
    painted = ImageOps.posterize(Image.merge("RGB", (blue, red, green)), 2)
    out = io.BytesIO()
    painted.save(out, "JPEG", quality=92)  # fal answers with a JPEG at the size it was sent
    return out.getvalue()


def _checkerboard(size: tuple[int, int], square: int = 12) -> Image.Image:
    board = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(board)
    for top in range(0, size[1], square):
        for left in range(0, size[0], square):
            if (left // square + top // square) % 2:
                draw.rectangle((left, top, left + square - 1, top + square - 1), fill=(205, 205, 205))
    return board


def _shown(picture: Image.Image) -> Image.Image:
    """The input as a viewer shows it: transparency over a checkerboard."""
    if "A" not in picture.getbands():
        return picture.convert("RGB")
    rgba = picture.convert("RGBA")
    board = _checkerboard(rgba.size)
    board.paste(rgba, (0, 0), rgba)
    return board


def _thumb(picture: Image.Image) -> Image.Image:
    width = round(picture.width * THUMB_PX / picture.height)
    return picture.convert("RGB").resize((width, THUMB_PX), Image.Resampling.LANCZOS, reducing_gap=3.0)


def _outline(thumb: Image.Image, crop: masks.Crop, full: tuple[int, int]) -> Image.Image:
    scale = thumb.height / full[1]
    box = [round(value * scale) for value in crop]
    out = thumb.copy()
    ImageDraw.Draw(out).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=CROP_LINE, width=2)
    return out


def _lines(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int
) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines[:CAPTION_LINES]


def row(example: Example, limits: LimitSettings) -> Image.Image:
    """The three thumbnails of one mask source with their captions."""
    data = (FIXTURES / example.image).read_bytes()
    with Image.open(io.BytesIO(data)) as opened:
        picture = ImageOps.exif_transpose(opened)
        if example.scale != 1:
            picture = picture.resize((picture.width * example.scale, picture.height * example.scale))
            out = io.BytesIO()
            picture.save(out, "PNG")
            data = out.getvalue()
        shown = _shown(picture)
    mask = (FIXTURES / example.mask).read_bytes() if example.mask else None
    prepared = images.prepare(data, mask, invert=False, limits=limits, source=example.source, feather_px=FEATHER_PX)
    result = images.finish_output(
        stand_in_fal(prepared.image),
        width=prepared.width,
        height=prepared.height,
        output_format="png",
        limits=limits,
        original=data,
        crop=prepared.crop,
        full_mask=prepared.full_mask,
        feather_px=FEATHER_PX,
    )
    with Image.open(io.BytesIO(prepared.preview)) as preview, Image.open(io.BytesIO(result)) as delivered:
        overlay, painted = _thumb(preview), _thumb(delivered)
    size = (prepared.width, prepared.height)
    whole = prepared.crop == (0, 0, *size)
    sent = f"{prepared.sent_width}×{prepared.sent_height}"
    input_caption = f"input, {size[0]}×{size[1]}"
    if whole:
        result_caption = f"result ({STAND_IN}); fal got the whole image at {sent}"
    else:
        crop_size = f"{prepared.crop[2] - prepared.crop[0]}×{prepared.crop[3] - prepared.crop[1]}"
        overlay = _outline(overlay, prepared.crop, size)
        result_caption = f"result ({STAND_IN}); fal got the {crop_size} crop at {sent}"
    tiles = [(_thumb(shown), input_caption), (overlay, example.mask_caption), (painted, result_caption)]
    return _layout(example.title, tiles)


def _layout(title: str, tiles: Sequence[tuple[Image.Image, str]]) -> Image.Image:
    title_font = ImageFont.load_default(size=TITLE_PT)
    caption_font = ImageFont.load_default(size=CAPTION_PT)
    width = sum(tile.width for tile, _ in tiles) + GAP_PX * (len(tiles) + 1)
    caption_top = GAP_PX + TITLE_PT + 8 + THUMB_PX + 5
    height = caption_top + CAPTION_LINES * (CAPTION_PT + 3) + GAP_PX
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP_PX, GAP_PX), _plain(title), font=title_font, fill=INK)
    left = GAP_PX
    for tile, caption in tiles:
        sheet.paste(tile, (left, GAP_PX + TITLE_PT + 8))
        for index, line in enumerate(_lines(draw, _plain(caption), caption_font, tile.width)):
            draw.text((left, caption_top + index * (CAPTION_PT + 3)), line, font=caption_font, fill=GREY)
        left += tile.width + GAP_PX
    return sheet


def _plain(text: str) -> str:
    return text.replace("×", "x")  # Pillow's built-in font has no multiplication sign


def save(sheet: Image.Image, path: Path) -> int:
    small = sheet.quantize(COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    small.save(path, "PNG", optimize=True)
    return path.stat().st_size


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m docs.make_pictures", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for masks-*.png (default: docs/)")
    args = parser.parse_args(argv)
    limits = LimitSettings()
    for example in EXAMPLES:
        path = args.out / f"masks-{example.name}.png"
        print(f"{path} ({save(row(example, limits), path) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
