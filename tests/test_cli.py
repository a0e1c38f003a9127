"""``fluxpaint inpaint`` as a process, against the fake fal: what a new user with only a fal key sees."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from tests.fakes.fal import FakeFal, start_fake_fal
from tests.rig import FIXTURES

REPO = Path(__file__).resolve().parents[1]


async def fluxpaint_inpaint(fal: FakeFal, tmp_path: Path, *args: str, config: str = "") -> tuple[int, str, str]:
    """``python -m bot inpaint`` with these arguments; ``config`` is the TOML file's text (none: no file)."""
    path = tmp_path / ("fluxpaint.toml" if config else "none.toml")
    if config:
        path.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUXPAINT_", "DISCORD_", "FAL_"))}
    env |= {
        "FAL_KEY": fal.key,
        "FLUXPAINT_FAL__BASE_URL": str(fal.base_url),
        "FLUXPAINT_FAL__MEDIA_HOSTS": json.dumps([fal.media_host]),
        "FLUXPAINT_FAL__POLL_INTERVAL_S": "0.05",
        "PYTHONPATH": str(REPO),
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bot", "--config", str(path), "inpaint", *args),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def coffee_args(tmp_path: Path, **extra: str) -> list[str]:
    args = ["--image", str(FIXTURES / "coffee.png"), "--mask", str(FIXTURES / "coffee_mask.png")]
    args += ["--prompt", "latte art shaped like a fox", "--out", str(tmp_path / "out")]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


async def test_one_job_from_the_terminal(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server, positions=[2, 1, 0])
    code, out, err = await fluxpaint_inpaint(
        fal, tmp_path, *coffee_args(tmp_path, num_images="2", output_format="png", strength="0.6", seed="7")
    )
    assert code == 0, err
    paths = [Path(line) for line in out.splitlines()]
    assert [p.name for p in paths] == ["coffee-inpainted-1.png", "coffee-inpainted-2.png"]
    for path in paths:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", (600, 400))
    assert "estimated cost: $0.017" in err and "queued at fal: position 2" in err and "request id:" in err
    (submitted,) = fal.submits
    assert submitted["strength"] == 0.6 and submitted["seed"] == 7 and submitted["num_images"] == 2
    assert fal.key not in out + err


async def test_bad_options_and_files_stop_before_fal(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server)
    code, _, err = await fluxpaint_inpaint(fal, tmp_path, *coffee_args(tmp_path, strength="5"))
    assert code == 2 and "--strength: Input should be less than or equal to 1" in err
    text = tmp_path / "notes.png"
    text.write_text("hello, I am a text file\n" * 40)
    args = coffee_args(tmp_path)
    args[args.index("--image") + 1] = str(text)
    code, _, err = await fluxpaint_inpaint(fal, tmp_path, *args)
    assert code == 1 and "isn't a picture" in err and "Traceback" not in err
    assert fal.requests == []


def photo_args(tmp_path: Path, *source: str, **extra: str) -> list[str]:
    """coffee.png with the given mask source flags (none: its transparency) and PNG output, so pixels compare."""
    args = ["--image", str(FIXTURES / "coffee.png"), *source, "--prompt", "a red scarf", "--out", str(tmp_path / "out")]
    args += ["--output-format", "png"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def submitted_to(fal: FakeFal) -> list[str]:
    return [r.path for r in fal.requests if r.method == "POST" and not r.path.startswith("/storage/")]


def unchanged_outside(result: Path, keep: tuple[int, int, int, int]) -> bool:
    """Whether the result holds the input's pixels everywhere except inside ``keep`` (left, top, right, bottom)."""
    with Image.open(FIXTURES / "coffee.png") as original, Image.open(result) as delivered:
        before, after = original.convert("RGB"), delivered.convert("RGB")
        assert after.size == before.size
        for im in (before, after):
            im.paste((0, 0, 0), keep)
        return before.tobytes() == after.tobytes()


async def test_mask_prompt_finds_the_mask_then_inpaints(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server, positions=[1, 0])
    code, out, err = await fluxpaint_inpaint(fal, tmp_path, *photo_args(tmp_path, "--mask-prompt", "the cup"))
    assert code == 0, err
    assert submitted_to(fal) == ["/fal-ai/evf-sam", "/fal-ai/flux-lora/inpainting"]
    segment, inpaint = fal.submits
    assert segment["prompt"] == "the cup" and segment["mask_only"] is True and "mask_url" in inpaint
    assert fal.refused == []
    (path,) = [Path(line) for line in out.splitlines()]
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", (600, 400))
    # the fake's ellipse fills 30 % to 70 % of each side; the default feather (8 px) stays within 10 px of it
    assert unchanged_outside(path, (170, 110, 430, 290))
    assert "Finding “the cup” in your image…\r\x1b[2Kmask found\n" in err and "segmentation request id:" in err
    assert "estimated cost: at most $0.010 (finding the mask $0.002, then the inpainting)" in err
    assert "estimated cost: $0.010 (including $0.002 to find the mask)" in err
    assert (tmp_path / "out" / "coffee-mask-preview.jpg").is_file()


async def test_box_repaints_only_the_box(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server)
    args = photo_args(tmp_path, "--box", "30,20,70,80", mask_grow="4", mask_feather="6")
    code, out, err = await fluxpaint_inpaint(fal, tmp_path, *args)
    assert code == 0, err
    assert submitted_to(fal) == ["/fal-ai/flux-lora/inpainting"] and fal.refused == []
    (path,) = [Path(line) for line in out.splitlines()]
    # the box is x 180..420, y 80..320; grown by 4 and feathered by 6 it reaches 10 px further
    assert unchanged_outside(path, (170, 70, 430, 330))
    assert not unchanged_outside(path, (0, 0, 0, 0))  # and fal's pixels are inside it
    assert "estimated cost: $0.008" in err and "to find the mask" not in err


async def test_a_small_box_on_a_large_photo_sends_and_costs_the_crop(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server)
    large = tmp_path / "large.png"
    with Image.open(FIXTURES / "coffee.png") as coffee:
        coffee.resize((2400, 1600)).save(large)
    args = photo_args(tmp_path, "--box", "45,45,55,55")
    args[args.index("--image") + 1] = str(large)
    code, out, err = await fluxpaint_inpaint(fal, tmp_path, *args)
    assert code == 0, err
    assert "note: Only the area around the mask (360×240) is sent to fal" in err
    # 872×584 (the crop scaled up to 0.5 MP) instead of 1728×1152 for the whole photo: $0.018, not $0.070
    assert "estimated cost: $0.018" in err
    (path,) = [Path(line) for line in out.splitlines()]
    with Image.open(path) as image:
        assert image.size == (2400, 1600)


async def test_two_mask_sources_are_refused_before_fal(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server)
    both = ("--mask", str(FIXTURES / "coffee_mask.png"), "--mask-prompt", "the cup")
    code, _, err = await fluxpaint_inpaint(fal, tmp_path, *photo_args(tmp_path, *both))
    assert code == 2 and "Choose the area to repaint one way only: you gave mask and mask_prompt." in err
    code, _, err = await fluxpaint_inpaint(fal, tmp_path, *photo_args(tmp_path, "--box", "1,2,3", "--region", "top"))
    assert code == 2 and "you gave box and region." in err
    code, _, err = await fluxpaint_inpaint(fal, tmp_path, *photo_args(tmp_path, "--box", "70,20,30,80"))
    assert code == 2 and "right edge x2 (30) must be greater than its left edge x1 (70)" in err
    assert fal.requests == [] and "Traceback" not in err


async def test_nothing_matched_sends_no_inpainting(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server, segment_box=None)
    code, out, err = await fluxpaint_inpaint(fal, tmp_path, *photo_args(tmp_path, "--mask-prompt", "a unicorn"))
    assert code == 1 and out == ""
    assert 'fluxpaint: Nothing matched "a unicorn" in the image; try other words, a box or a region.' in err
    assert submitted_to(fal) == ["/fal-ai/evf-sam"] and "Traceback" not in err


async def test_failed_segmentation_sends_no_inpainting(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server, segment_fail_with="CUDA out of memory")
    code, _, err = await fluxpaint_inpaint(fal, tmp_path, *photo_args(tmp_path, "--mask-prompt", "the cup"))
    assert code == 1 and "fal could not find the mask" in err
    assert submitted_to(fal) == ["/fal-ai/evf-sam"] and "Traceback" not in err


HF = "https://huggingface.co/someone/loras/resolve/main"
CATALOG = f"""
[catalog]
allow_urls = {{allow_urls}}

[limits]
max_loras = {{max_loras}}

[[loras]]
name = "pixel-art"
path = "{HF}/pixel-art.safetensors"
trigger_words = ["pixel art"]
description = "8-bit pixel art"

[[loras]]
name = "watercolor"
path = "{HF}/watercolor.safetensors"
scale = 0.7
trigger_words = ["watercolor"]

[[loras]]
name = "film-grain"
path = "{HF}/film-grain.safetensors"

[[loras]]
name = "bokeh"
path = "{HF}/bokeh.safetensors"
trigger_words = ["bokeh"]

[[styles]]
name = "retro-game"
prompt = "{{{{prompt}}}}, retro video game screenshot"
loras = [{{{{ name = "pixel-art", scale = 0.8 }}}}]
strength = 0.9
num_inference_steps = 30
"""


def catalog(*, allow_urls: bool = False, max_loras: int = 4) -> str:
    return CATALOG.format(allow_urls=str(allow_urls).lower(), max_loras=max_loras)


async def test_loras_are_sent_in_order_with_their_scales(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server)
    loras = ("--lora", "watercolor", "--lora", "pixel-art:1.5", "--lora", "film-grain:0.25", "--lora", "bokeh")
    code, _, err = await fluxpaint_inpaint(fal, tmp_path, *coffee_args(tmp_path), *loras, config=catalog())
    assert code == 0, err
    (submitted,) = fal.submits
    assert submitted["loras"] == [
        {"path": f"{HF}/watercolor.safetensors", "scale": 0.7},
        {"path": f"{HF}/pixel-art.safetensors", "scale": 1.5},
        {"path": f"{HF}/film-grain.safetensors", "scale": 0.25},
        {"path": f"{HF}/bokeh.safetensors", "scale": 1.0},
    ]
    # each trigger word once, in the LoRAs' order, in front of the prompt; what fal received is what is printed
    assert submitted["prompt"] == "watercolor, pixel art, bokeh, latte art shaped like a fox"
    assert "prompt sent to fal: watercolor, pixel art, bokeh, latte art shaped like a fox" in err
    for line in ("lora: watercolor × 0.7", "lora: pixel-art × 1.5", "lora: film-grain × 0.25", "lora: bokeh × 1"):
        assert line in err


async def test_no_lora_sends_none(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server)
    code, _, err = await fluxpaint_inpaint(fal, tmp_path, *coffee_args(tmp_path), config=catalog())
    assert code == 0, err
    (submitted,) = fal.submits
    assert submitted.get("loras", []) == [] and submitted["prompt"] == "latte art shaped like a fox"
    assert "lora:" not in err and "prompt sent to fal" not in err


async def test_unusable_loras_are_refused_before_fal(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server)
    link = f"{HF}/other.safetensors"
    refused = {
        ("--lora", "pixel-art", "--lora", "cyberpunk"): "--lora #2: `cyberpunk` is not a LoRA here",
        ("--lora", "bokeh", "--lora", "watercolor", "--lora", "no-such-lora:0.5"): (
            "--lora #3: `no-such-lora` is not a LoRA here"
        ),
        ("--lora", "pixel-art", "--lora", "pixel-art:0.5"): "lora and lora2 name `pixel-art` twice",
        ("--lora", "bokeh", "--lora", "watercolor", "--lora", "bokeh:2"): "--lora #3: bokeh is already used",
        ("--lora", f"{link}:0.5"): "--lora #1: LoRAs are chosen by name here, not by link",
        ("--lora", "pixel-art:5"): "the scale must be 0 to 4",
        ("--style", "vaporwave"): "`vaporwave` is not a style here",
    }
    for flags, message in refused.items():
        code, _, err = await fluxpaint_inpaint(fal, tmp_path, *coffee_args(tmp_path), *flags, config=catalog())
        assert code == 2 and message in err, (flags, err)
        assert "Traceback" not in err
    # the style's LoRA counts: pixel-art, then three more, with limits.max_loras = 3
    too_many = ("--style", "retro-game", "--lora", "bokeh", "--lora", "watercolor", "--lora", "film-grain")
    code, _, err = await fluxpaint_inpaint(
        fal, tmp_path, *coffee_args(tmp_path), *too_many, config=catalog(max_loras=3)
    )
    assert code == 2 and "at most 3 are allowed" in err
    assert fal.requests == []


async def test_a_link_with_a_scale_when_the_owner_allows_links(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server)
    link = "https://v3.fal.media/files/rabbit/abc123_pytorch_lora_weights.safetensors"
    flags = ("--lora", f"{link}:0.6", "--lora", link.replace("abc123", "def456"))
    code, _, err = await fluxpaint_inpaint(
        fal, tmp_path, *coffee_args(tmp_path), *flags, config=catalog(allow_urls=True)
    )
    assert code == 0, err
    (submitted,) = fal.submits
    assert submitted["loras"] == [{"path": link, "scale": 0.6}, {"path": link.replace("abc123", "def456"), "scale": 1}]


async def test_a_style_brings_its_template_loras_and_defaults(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server)
    flags = ("--style", "retro-game", "--lora", "watercolor:0.5", "--num-inference-steps", "12")
    code, _, err = await fluxpaint_inpaint(fal, tmp_path, *coffee_args(tmp_path), *flags, config=catalog())
    assert code == 0, err
    (submitted,) = fal.submits
    assert submitted["prompt"] == "pixel art, watercolor, latte art shaped like a fox, retro video game screenshot"
    assert submitted["loras"] == [
        {"path": f"{HF}/pixel-art.safetensors", "scale": 0.8},  # the style's LoRAs come first
        {"path": f"{HF}/watercolor.safetensors", "scale": 0.5},
    ]
    # the style's default fills what was left out; what was typed wins
    assert submitted["strength"] == 0.9 and submitted["num_inference_steps"] == 12
    assert "style: retro-game" in err and "lora: pixel-art × 0.8" in err and "lora: watercolor × 0.5" in err


async def test_a_third_lora_retunes_the_styles_lora_in_its_place(aiohttp_server: Any, tmp_path: Path) -> None:
    fal = await start_fake_fal(aiohttp_server)
    flags = ("--style", "retro-game", "--lora", "bokeh", "--lora", "watercolor", "--lora", "pixel-art:2")
    code, _, err = await fluxpaint_inpaint(fal, tmp_path, *coffee_args(tmp_path), *flags, config=catalog())
    assert code == 0, err
    (submitted,) = fal.submits
    assert [(lora["path"].rsplit("/", 1)[1], lora["scale"]) for lora in submitted["loras"]] == [
        ("pixel-art.safetensors", 2),
        ("bokeh.safetensors", 1),
        ("watercolor.safetensors", 0.7),
    ]
