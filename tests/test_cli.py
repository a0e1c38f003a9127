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


async def fluxpaint_inpaint(fal: FakeFal, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUXPAINT_", "DISCORD_", "FAL_"))}
    env |= {
        "FAL_KEY": fal.key,
        "FLUXPAINT_FAL__BASE_URL": str(fal.base_url),
        "FLUXPAINT_FAL__MEDIA_HOSTS": json.dumps([fal.media_host]),
        "FLUXPAINT_FAL__POLL_INTERVAL_S": "0.05",
        "PYTHONPATH": str(REPO),
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bot", "--config", str(tmp_path / "none.toml"), "inpaint", *args),
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
