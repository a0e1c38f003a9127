"""One real job at fal.ai (opt-in, billed: about $0.01). Never runs in CI; the default options skip the marker.

    FAL_KEY=... .venv/bin/python -m pytest -m live tests/test_live.py

Through a proxy: also set FLUXPAINT_FAL__BASE_URL and FLUXPAINT_FAL__AUTH_SCHEME=Bearer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.rig import FIXTURES

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not os.environ.get("FAL_KEY"), reason="needs FAL_KEY: this job is real and billed"),
]

REPO = Path(__file__).resolve().parents[1]


def test_one_job_through_the_real_fal(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLUXPAINT_CONFIG"}
    env.setdefault("DISCORD_TOKEN", "not-needed-for-the-terminal-command")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bot", "--config", str(tmp_path / "none.toml"), "inpaint"),
            *("--image", str(FIXTURES / "coffee.png"), "--mask", str(FIXTURES / "coffee_mask.png")),
            *("--prompt", "latte art shaped like a fox", "--num-inference-steps", "12", "--seed", "7"),
            *("--out", str(tmp_path / "out")),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = sorted((tmp_path / "out").iterdir())
    with Image.open(result) as image:
        assert image.size == (600, 400)
    assert env["FAL_KEY"] not in done.stdout + done.stderr
